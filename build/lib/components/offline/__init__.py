"""Tools on top of the program, none needing AWS: the program run under Pulumi's mocks (mocks.py), and what
reads its registrations (report, flows, diff, terraform_plan, scan) or a job's logs (nccl-tests reports)."""

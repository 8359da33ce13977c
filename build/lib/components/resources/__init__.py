"""The Pulumi components (network, fleets, EKS cluster, jobs) and the wiring `pulumi up` runs (stack.py),
built from the pure plan."""

"""How a job is launched: the derived plan, Kubernetes manifests, EC2 node scripts.

`job_plan()` derives everything a launch needs from the stack config and the
catalog (nodes, processes, EFA devices, accelerators, the EFA/NCCL
environment). The two renderers turn one plan into what a target runs:
`render_manifests()` for fleets in an EKS cluster (`manifests_yaml()` writes
them out), `render_node_script()` for plain EC2 fleets (`ssm_document()` wraps
it for SSM Run Command, `send_command_request()` sends it to the whole fleet). Pure: no Pulumi import.
"""

from .ec2 import (RUN_LOG_RETENTION_DAYS, SSM_HEREDOC, render_node_script, run_log_group, send_command_line,
                  send_command_request, ssm_document)
from .job_plan import JobPlan, LaunchError, job_plan
from .kubernetes import SSHD_CAPABILITIES, manifests_yaml, render_manifests

__all__ = ["JobPlan", "LaunchError", "RUN_LOG_RETENTION_DAYS", "SSHD_CAPABILITIES", "SSM_HEREDOC", "job_plan", "manifests_yaml",
           "render_manifests", "render_node_script", "run_log_group", "send_command_line", "send_command_request", "ssm_document"]

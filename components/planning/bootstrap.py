"""The boot script of a fleet's nodes (launch template user data).

It raises the locked-memory limit (EFA registers memory with the device;
without it: "Cannot allocate memory"), raises the 2 MiB hugepages to what the
jobs need (libfabric uses them for its buffers; never lowered) and checks that
every EFA device and accelerator the type has is present. A node that fails
the check says so where its orchestrator listens: on plain EC2 it marks itself
unhealthy in its Auto Scaling group, which replaces it; on EKS it registers
with a taint no job tolerates, its value naming what is missing. It also holds
the node's memory budget: what a pod may use beside the hugepages. Pure: no
Pulumi import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .preflight import COUNT_EFA_DEVICES, count_accelerators

HUGEPAGES_MIB = 5120  # what AWS's nccl-tests manifests request per pod (hugepages-2Mi: 5120Mi)
# Share of the node's memory (after hugepages) a pod may use; the rest is left
# to the kubelet, system daemons and device plugins, so the pod stays schedulable.
POD_MEMORY_SHARE = 0.85
# Likewise the vCPUs a whole-node pod asks for (requests = limits: Guaranteed QoS); the rest stays with
# the kubelet's reserve and the node's daemons (VPC CNI, kube-proxy, device plugins).
POD_CPU_SHARE = 0.9
MIME_BOUNDARY = "==EFAINFRA=="
DEVICE_WAIT = (180, 5)  # seconds a node waits for its devices to appear before the check fails, and between looks
BOOT_CHECK_TAINT = "efa-infra/boot-check"  # on EKS nodes that fail the boot check; no job tolerates it
# nodeadm-run (after cloud-init's scripts) reads NodeConfig drop-ins from here (amazon-eks-ami,
# templates/al2023/runtime/rootfs/etc/systemd/system/nodeadm-run.service).
NODEADM_DROP_IN = "/etc/eks/nodeadm.d/90-efa-infra-boot-check.yaml"
# Older EKS AMIs ignore that directory: a node failing the check there would register without the taint and take
# jobs. A fleet that pins an AMI says its release (fleets[].amiRelease), checked against this (data/eks_node_ami.json).
DROP_INS_SINCE = json.loads((Path(__file__).resolve().parent.parent / "data" / "eks_node_ami.json").read_text())["nodeadmDropInsSince"]
# The fleet-wide guard on plain EC2: once this many boot checks fail in one window (clock-aligned, the alarm's period),
# the group stops replacing unhealthy nodes, so an AMI or a type that fails every node cannot churn through the fleet.
GUARD_FAILURES = 3
GUARD_WINDOW_MINUTES = 60
GUARD_SETTLE_SECONDS = 60  # a failing node waits this long before counting, so that nodes failing together see each other
GUARD_NAMESPACE, GUARD_METRIC, GUARD_DIMENSION = "efa-infra", "BootCheckFailed", "AutoScalingGroupName"
GUARD_PROCESS = "ReplaceUnhealthy"  # suspended, the group keeps unhealthy instances (EC2 Auto Scaling user guide,
# "How suspended processes affect other processes")


def pod_memory_gib(node_memory_mib: int, efa: bool) -> int:
    """The memory a pod holding a whole node may use, in whole GiB; nodes with EFA
    devices have set the hugepages aside at boot."""
    return int((node_memory_mib - (HUGEPAGES_MIB if efa else 0)) * POD_MEMORY_SHARE) // 1024


@dataclass(frozen=True)
class Node:
    """What a fleet's boot script needs to know of its nodes."""

    fleet: str
    efa_devices: int
    accelerator: tuple[str, int] | None = None  # (kind, count)
    boot_check: bool = True  # act on a failed check; False: only log it
    eks: bool = False
    max_pods: int | None = None  # EKS only
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)


def _taints_flag(taints: list[dict[str, str]]) -> str:
    return "--register-with-taints=" + ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in taints)


def _boot_guard() -> str:
    """Plain EC2, before a failing node marks itself unhealthy: it counts its failure in a CloudWatch metric of its
    Auto Scaling group and, once the group has GUARD_FAILURES failures in the current window, suspends the group's
    ReplaceUnhealthy process: the failing nodes stay, marked unhealthy, and none is replaced until the team resumes
    it. The metric's alarm (resources/fleet.py) is the signal. Needs `$instance`, `$region` and `log`."""
    window = GUARD_WINDOW_MINUTES * 60
    dimensions = [{"Name": GUARD_DIMENSION, "Value": "%s"}]
    put = json.dumps({"Namespace": GUARD_NAMESPACE, "MetricData": [
        {"MetricName": GUARD_METRIC, "Dimensions": dimensions, "Value": 1, "Unit": "Count"}]}, separators=(",", ":"))
    count = json.dumps({"Namespace": GUARD_NAMESPACE, "MetricName": GUARD_METRIC, "Dimensions": dimensions,
                        "StartTime": "%s", "EndTime": "%s", "Period": window, "Statistics": ["Sum"]}, separators=(",", ":"))
    return f"""outcome="which replaces it"
for attempt in 1 2 3 4 5; do  # as below: the instance profile's credentials can lag
  group=$(aws autoscaling describe-auto-scaling-instances --region "$region" --instance-ids "$instance" \\
    --query 'AutoScalingInstances[0].AutoScalingGroupName' --output text) && break
  group=; sleep 10
done
if [[ -z $group || $group == None ]]; then
  log "boot guard: no Auto Scaling group holds $instance; its failure is not counted"
else
  aws cloudwatch put-metric-data --region "$region" --cli-input-json "$(printf '{put}' "$group")" ||
    log "boot guard: could not count this failure in {GUARD_NAMESPACE}/{GUARD_METRIC}"
  sleep {GUARD_SETTLE_SECONDS}
  start=$(( $(date +%s) / {window} * {window} ))
  failed=$(aws cloudwatch get-metric-statistics --region "$region" --cli-input-json "$(printf '{count}' "$group" \\
    "$(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)" "$(date -u -d "@$((start + {window}))" +%Y-%m-%dT%H:%M:%SZ)")" \\
    --query 'Datapoints[0].Sum' --output text) || failed=
  failed=${{failed%%.*}}
  if ! [[ $failed =~ ^[0-9]+$ ]] || (( failed < 1 )); then failed=1; fi  # this node's own, not yet visible
  if (( failed >= {GUARD_FAILURES} )); then
    if aws autoscaling suspend-processes --region "$region" --auto-scaling-group-name "$group" --scaling-processes {GUARD_PROCESS}; then
      outcome="which keeps it while {GUARD_PROCESS} is suspended"
      log "boot guard: $failed failed boot checks in $group this window (the guard stops at {GUARD_FAILURES}): its {GUARD_PROCESS} process is suspended, no node is replaced until it is resumed (README: What happens to a bad node)"
    else
      log "boot guard: $failed failed boot checks in $group this window, but its {GUARD_PROCESS} process could not be suspended"
    fi
  fi
fi
"""


def _failure_action(node: Node) -> str:
    """What a node does when its check fails: `$reason` names what is missing."""
    if not node.boot_check:
        return 'log "boot check: left in service (bootCheck is false)"'
    if node.eks:
        # The node's own taints come first: the kubelet takes the last --register-with-taints it is given.
        flags = [_taints_flag([*node.taints, {"key": BOOT_CHECK_TAINT, "value": "$reason", "effect": "NoSchedule"}]),
                 f"--node-labels={BOOT_CHECK_TAINT}=failed"]
        config = yaml.safe_dump({"apiVersion": "node.eks.aws/v1alpha1", "kind": "NodeConfig",
                                 "spec": {"kubelet": {"flags": flags}}}, sort_keys=False)
        return f"""mkdir -p {NODEADM_DROP_IN.rsplit("/", 1)[0]}
cat > {NODEADM_DROP_IN} <<NODECONFIG
{config.strip()}
NODECONFIG
log "boot check: the node registers with the taint {BOOT_CHECK_TAINT}=$reason:NoSchedule, so no job lands on it"
"""
    return """token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
imds() { curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"; }
instance=$(imds instance-id) region=$(imds placement/region)
""" + _boot_guard() + """for attempt in 1 2 3 4 5; do  # the instance profile's credentials can lag the first seconds of boot
  if aws autoscaling set-instance-health --region "$region" --instance-id "$instance" \
       --health-status Unhealthy --no-should-respect-grace-period; then
    log "boot check: $instance marked unhealthy in its Auto Scaling group, $outcome"
    break
  fi
  log "boot check: could not mark $instance unhealthy (attempt $attempt)"
  if (( attempt == 5 )); then log "boot check: gave up; the node stays in service: replace it by hand"; fi
  sleep 10
done"""


def pod_cpus(node_vcpus: int) -> int:
    """The whole vCPUs a pod holding a whole node asks for."""
    return max(1, int(node_vcpus * POD_CPU_SHARE))


def boot_script(node: Node) -> str:
    pages = HUGEPAGES_MIB // 2 if node.efa_devices else 0
    accelerators = ""
    if node.accelerator:
        kind, count = node.accelerator
        accelerators = f"""{count_accelerators(kind)}
if (( accel_found < {count} )); then missing+=("{kind}-$accel_found-of-{count}"); fi
seen+=("$accel_found of {count} {kind} accelerators")
"""
    return f"""#!/bin/bash
# efa-infra boot script for fleet {node.fleet}
set -uo pipefail
log() {{ logger -t efa-infra "$*"; echo "$(date -Is) $*" >> /var/log/efa-infra-boot.log; }}

cat > /etc/security/limits.d/90-efa-infra.conf <<'LIMITS'
* soft memlock unlimited
* hard memlock unlimited
LIMITS
mkdir -p /etc/systemd/system.conf.d
printf '[Manager]\\nDefaultLimitMEMLOCK=infinity\\n' > /etc/systemd/system.conf.d/90-efa-infra.conf
systemctl daemon-reexec || true

# The AMI and the EFA installer may reserve more already: only ever raise the count.
want={pages}
have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
if (( have < want )); then
  echo "vm.nr_hugepages = $want" > /etc/sysctl.d/90-efa-infra.conf
  sysctl -q -p /etc/sysctl.d/90-efa-infra.conf || log "could not reserve $want hugepages"
else
  log "hugepages: $have reserved, $want needed: left as they are"
fi

# Device nodes appear as udev and the drivers get to them: wait a while before calling a node short.
udevadm settle --timeout=60 >/dev/null 2>&1 || true
{"nvidia-smi -L >/dev/null 2>&1 || true  # loads the driver and makes the /dev/nvidiaN nodes" if node.accelerator and node.accelerator[0] == "gpu" else ""}
expected={node.efa_devices} waited=0
while :; do
{COUNT_EFA_DEVICES.strip()}
missing=() seen=("EFA devices: $efa_seen, $expected expected")
if (( efa_found < expected )); then missing+=("efa-$efa_found-of-$expected"); fi
{accelerators}if (( ${{#missing[@]}} == 0 || waited >= {DEVICE_WAIT[0]} )); then break; fi
sleep {DEVICE_WAIT[1]}; waited=$((waited + {DEVICE_WAIT[1]}))
done
if (( ${{#missing[@]}} == 0 )); then
  log "boot check passed: ${{seen[*]}}"
else
  reason=$(IFS=_; echo "${{missing[*]}}")
  log "boot check FAILED ($reason): ${{seen[*]}}; NCCL would fall back to TCP or lose ranks"
{_failure_action(node)}
fi
"""


def user_data(node: Node, cluster: dict[str, str] | None = None) -> str:
    """The boot script; for EKS nodes in MIME multipart form, the only form EKS
    merges with its own bootstrap, with a nodeadm NodeConfig so the kubelet never
    advertises more pods than the VPC CNI can address.

    `cluster` (name, apiServerEndpoint, certificateAuthority, cidr) is for a pinned
    AMI: EKS then adds no bootstrap, and nodeadm needs it to join the cluster. The
    node then registers with its labels and taints itself, since EKS applies the
    node group's only after the node has joined (and may have taken other pods)."""
    script = boot_script(node)
    if not node.eks:
        return script
    kubelet: dict = {"config": {"maxPods": node.max_pods}}
    spec: dict = {"kubelet": kubelet}
    if cluster is not None:
        flags = []
        if node.labels:
            flags.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
        if node.taints:
            flags.append(_taints_flag(node.taints))
        if flags:
            kubelet["flags"] = flags
        spec = {"cluster": dict(cluster), **spec}
    node_config = yaml.safe_dump({"apiVersion": "node.eks.aws/v1alpha1", "kind": "NodeConfig", "spec": spec}, sort_keys=False)
    return (
        f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n\n'
        f"--{MIME_BOUNDARY}\nContent-Type: application/node.eks.aws\n\n{node_config}\n"
        f"--{MIME_BOUNDARY}\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n"
        f"{script}\n--{MIME_BOUNDARY}--\n"
    )

"""The boot script of a fleet's nodes (launch template user data).

It raises the locked-memory limit (EFA registers memory with the device;
without it: "Cannot allocate memory"), raises the 2 MiB hugepages to what the
jobs need (libfabric uses them for its buffers; never lowered) and checks that every EFA device the type has is
present, logging the result. It also holds the node's memory budget that
follows: what a pod may use beside the hugepages. Pure: no Pulumi import.
"""

from __future__ import annotations

import yaml

from .preflight import COUNT_EFA_DEVICES

HUGEPAGES_MIB = 5120  # what AWS's nccl-tests manifests request per pod (hugepages-2Mi: 5120Mi)
# Share of the node's memory (after hugepages) a pod may use; the rest is left
# to the kubelet, system daemons and device plugins, so the pod stays schedulable.
POD_MEMORY_SHARE = 0.85
MIME_BOUNDARY = "==EFAINFRA=="


def pod_memory_gib(node_memory_mib: int, efa: bool) -> int:
    """The memory a pod holding a whole node may use, in whole GiB; nodes with EFA
    devices have set the hugepages aside at boot."""
    return int((node_memory_mib - (HUGEPAGES_MIB if efa else 0)) * POD_MEMORY_SHARE) // 1024


def boot_script(fleet: str, efa_devices: int) -> str:
    pages = HUGEPAGES_MIB // 2 if efa_devices else 0
    return f"""#!/bin/bash
# efa-infra boot script for fleet {fleet}
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

expected={efa_devices}
{COUNT_EFA_DEVICES.strip()}
if (( efa_found >= expected )); then
  log "EFA check passed: $efa_seen, $expected expected"
else
  log "EFA check FAILED: $efa_seen, $expected expected; NCCL would fall back to TCP"
fi
"""


def user_data(fleet: str, efa_devices: int, max_pods: int | None = None, cluster: dict[str, str] | None = None,
              labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None) -> str:
    """The boot script; for EKS nodes (`max_pods` given) in MIME multipart form,
    the only form EKS merges with its own bootstrap, with a nodeadm NodeConfig
    so the kubelet never advertises more pods than the VPC CNI can address.

    `cluster` (name, apiServerEndpoint, certificateAuthority, cidr) is for a pinned
    AMI: EKS then adds no bootstrap, and nodeadm needs it to join the cluster. The
    node then registers with its labels and taints itself, since EKS applies the
    node group's only after the node has joined (and may have taken other pods)."""
    script = boot_script(fleet, efa_devices)
    if max_pods is None:
        return script
    spec: dict = {"kubelet": {"config": {"maxPods": max_pods}}}
    if cluster is not None:
        flags = []
        if labels:
            flags.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
        if taints:
            flags.append("--register-with-taints=" + ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in taints))
        spec = {"cluster": dict(cluster), "kubelet": {"config": {"maxPods": max_pods}, **({"flags": flags} if flags else {})}}
    node_config = yaml.safe_dump({"apiVersion": "node.eks.aws/v1alpha1", "kind": "NodeConfig", "spec": spec}, sort_keys=False)
    return (
        f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n\n'
        f"--{MIME_BOUNDARY}\nContent-Type: application/node.eks.aws\n\n{node_config}\n"
        f"--{MIME_BOUNDARY}\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n"
        f"{script}\n--{MIME_BOUNDARY}--\n"
    )

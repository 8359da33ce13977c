"""FSx for Lustre: the service's allowed sizes and throughputs, when a fleet's file system runs over EFA, the
ports Lustre needs, and how a node mounts it. The facts are data (data/fsx_lustre.json, each with its source).
Pure: no Pulumi import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import ofi_platform
from .catalog import InstanceType

if TYPE_CHECKING:  # the config's checks use this module: no import of config at load time
    from .config.data import FsxConfig

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "fsx_lustre.json"


@lru_cache(maxsize=1)
def facts() -> dict:
    return json.loads(DATA_FILE.read_text())


def claim_name(fleet: str) -> str:
    """The PersistentVolume and PersistentVolumeClaim of a fleet's file system on EKS."""
    return f"{fleet}-fsx"


def lnet_ports() -> list[tuple[int, int]]:
    """The TCP port ranges LNet uses between clients and the file system's servers."""
    return [tuple(r) for r in facts()["lnetPorts"]["tcp"]]


def storage_problems(fsx: FsxConfig, efa: bool = False) -> list[tuple[str, str]]:
    """(key under fsx, message) for a size or throughput the service refuses; with `efa`, the size steps an
    EFA-enabled file system takes at its throughput (larger ones: its servers hold more each)."""
    out = []
    steps = facts()["storageGiB"]
    size, step = fsx.storage_gib, steps["thenMultiplesOf"]
    allowed = facts()["throughputPerTiB"]["values"]
    if fsx.throughput_per_tib not in allowed:
        out.append(("throughputPerTiB", f"{fsx.throughput_per_tib} MB/s/TiB is not offered for {facts()['deploymentType']} "
                                        f"SSD: one of {', '.join(map(str, allowed))}"))
    if size not in steps["values"] and (size <= 0 or size % step):
        lower = max([v for v in steps["values"] if v < size] + ([size // step * step] if size >= step else []), default=0)
        upper = min(v for v in [*steps["values"], (size // step + 1) * step] if v > size)
        near = " or ".join(str(v) for v in (lower, upper) if v)
        out.append(("storageGiB", f"{size} GiB is not a size FSx for Lustre {facts()['deploymentType']} SSD takes: "
                                  f"1200, 2400 or a multiple of {step} (nearest: {near})"))
    elif efa and fsx.throughput_per_tib in allowed:
        efa_step = facts()["efa"]["storageIncrementGiB"]["byThroughputPerTiB"][str(fsx.throughput_per_tib)]
        if size % efa_step:
            near = " or ".join(str(v) for v in (size // efa_step * efa_step, (size // efa_step + 1) * efa_step) if v)
            out.append(("efa" if fsx.efa else "storageGiB",
                        f"{size} GiB cannot carry EFA at {fsx.throughput_per_tib} MB/s/TiB: an EFA-enabled file system "
                        f"takes multiples of {efa_step} GiB there (nearest: {near}; at 1000 MB/s/TiB multiples of 4800)"
                        + ("" if fsx.efa else "; EFA is the default for this fleet's type: or set fsx.efa: false")))
    return out


def family(itype: InstanceType) -> str:
    return itype.name.split(".")[0]


def efa_client(itype: InstanceType) -> bool:
    """Whether nodes of this type can reach a file system over EFA: an EFA type outside the families FSx leaves out."""
    return itype.efa_supported and family(itype) not in facts()["efa"]["clients"]["excludedFamilies"]


def gds(itype: InstanceType) -> bool:
    """Whether the type does GPUDirect Storage from FSx: a family FSx names, and GPUDirect RDMA on the type."""
    return family(itype) in facts()["efa"]["gds"]["families"] and ofi_platform.uses_device_rdma(itype)


def efa_enabled(fsx: FsxConfig, itype: InstanceType, fleet_efa: bool) -> bool:
    """The file system's EFA (and GPUDirect Storage): as asked, else on where the fleet has EFA and its type does
    GPUDirect Storage."""
    if fsx.efa is not None:
        return fsx.efa
    return fleet_efa and efa_client(itype) and gds(itype)


@dataclass(frozen=True)
class Mount:
    """What a node needs to mount a file system: known once it exists."""

    dns_name: str
    mount_name: str
    path: str

    @property
    def device(self) -> str:
        return facts()["mount"]["device"].format(dns=self.dns_name, mountName=self.mount_name)


def mount_script(m: Mount) -> str:
    """Boot-script lines that mount the file system now and at every boot, or say in the boot log why they cannot."""
    opts, fstab_opts = facts()["mount"]["options"], facts()["mount"]["fstabOptions"]
    return f"""fsx_mount() {{
  local device={m.device} path={m.path}
  mkdir -p "$path"
  if ! command -v mount.lustre >/dev/null 2>&1; then
    log "FSx: cannot mount $device on $path: no Lustre client (mount.lustre) on this AMI; install lustre-client or pin an AMI that has it"
    return 1
  fi
  if ! grep -qs " $path lustre " /etc/fstab; then
    echo "$device $path lustre {fstab_opts} 0 0" >> /etc/fstab
  fi
  if grep -qs " $path lustre " /proc/mounts; then
    log "FSx: $device already mounted on $path"
  elif mount.lustre -o {opts} "$device" "$path"; then
    log "FSx: mounted $device on $path"
  else
    log "FSx: mounting $device on $path FAILED (exit $?): check the file system's security group admits this node (TCP 988, 1018-1023)"
    return 1
  fi
}}
fsx_mount || true
"""

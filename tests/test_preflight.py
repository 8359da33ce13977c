"""The pods' container commands run for real, each in a private mount namespace
whose /dev holds stand-in EFA and GPU device nodes, with a stand-in fi_info and
launcher on PATH: the EFA preflight lets the launcher start only on a node that
has what the type has. Needs root (mount namespaces, mknod)."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.planning import config, launch
from conftest import DEPLOYER, stand_in_devices

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")

DATA = Path(__file__).resolve().parent / "data" / "nccl" / "transport"
GOLDEN = DATA.parent / "golden"
POD_ENV = {"POD_NAME": "train-0", "NODE_NAME": "ip-10-1-2-3", "JOB_COMPLETION_INDEX": "0"}
WHERE = "pod train-0 on node ip-10-1-2-3"


def stack(job: dict, instance_type: str = "p4d.24xlarge") -> tuple[config.StackConfig, config.JobConfig]:
    cfg = config.load({
        "region": "us-east-1",
        "eks": {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER, "operators": ["mpi-operator"]},
        "network": {"availabilityZones": ["us-east-1b"]},
        "fleets": [{"name": "gpu", "instanceType": instance_type, "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}],
        "jobs": [{"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["train.py"], "image": "x:1", **job}],
    })
    return cfg, cfg.jobs[0]


@dataclass
class Ran:
    rc: int
    log: str
    launched: bool  # the stand-in launcher ran
    env: dict[str, str]  # its environment


def stub(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def fi_info(tmp_path: Path, *, efa: bool = True, version: str = "1.22.0amzn4.0") -> None:
    """A stand-in fi_info: lists the efa provider (or none) and names its libfabric version."""
    stub(tmp_path, "fi_info", f'case "$1" in --version) echo "fi_info: {version}"; echo "libfabric: {version}";;\n'
                              f'  -p) {"echo provider: efa" if efa else "exit 1"};; esac\n')


def launcher(tmp_path: Path, name: str, prints: Path | None = None) -> None:
    """A stand-in launcher that notes it ran (and its environment), then prints an NCCL log excerpt."""
    mark = shlex.quote(str(tmp_path / "launched"))
    stub(tmp_path, name, f'env > {mark}\n' + (f"cat {shlex.quote(str(prints))}\n" if prints else ""))


def run(tmp_path: Path, command: list[str], setup: str) -> Ran:
    wrapped = ["unshare", "--mount", "sh", "-c", f'{setup} && exec "$@"', "sh", *command]
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(tmp_path), **POD_ENV}
    done = subprocess.run(wrapped, env=env, capture_output=True, text=True, timeout=60)
    mark = tmp_path / "launched"
    env_seen = dict(line.split("=", 1) for line in mark.read_text().splitlines() if "=" in line) if mark.exists() else {}
    return Ran(done.returncode, done.stdout + done.stderr, mark.exists(), env_seen)


def node_command(cfg, job) -> list[str]:
    docs = launch.render_manifests(cfg, job)
    pods = [t for d in docs for t in ([d["spec"]["template"]] if d["kind"] == "Job" else [])]
    return pods[0]["spec"]["containers"][0]["command"]


# --- the acceptance pair: the right count, and one device missing -----------------------


def test_with_every_device_the_launcher_starts(tmp_path):
    fi_info(tmp_path)
    launcher(tmp_path, "torchrun", prints=DATA / "efa_p4d.log")
    ran = run(tmp_path, node_command(*stack({})), stand_in_devices(4, 8))
    assert ran.rc == 0, ran.log
    assert ran.launched
    assert f"efa-infra[train]: EFA check passed on {WHERE}: 4 EFA devices, 8 accelerators" in ran.log
    assert "NET/OFI Selected provider is efa, fabric is efa (found 4 nics)" in ran.log  # the launcher's output, passed on
    assert "FI_EFA_USE_DEVICE_RDMA" not in ran.env  # libfabric 1.22 follows the device itself


def test_with_one_device_missing_the_launcher_never_starts(tmp_path):
    fi_info(tmp_path)
    launcher(tmp_path, "torchrun")
    ran = run(tmp_path, node_command(*stack({})), stand_in_devices(3, 8))
    assert ran.rc == 1
    assert not ran.launched
    assert (f"efa-infra[train]: error: EFA check failed on {WHERE}: expected 4 EFA devices (p4d.24xlarge), "
            "found 3 (3 in /dev/infiniband); NCCL would fall back to TCP. Fix the node, or set the job's efaCheck: false") in ran.log


# --- the other ways a node can fall short ------------------------------------------


@pytest.mark.parametrize("efa,gpus,listed,message", [
    (4, 8, False, "found 0 (4 in /dev/infiniband, but libfabric lists no efa provider (fi_info -p efa))"),
    (4, 7, True, "expected 8 NVIDIA GPUs (p4d.24xlarge), found 7 in /dev/nvidia*"),
    (0, 0, True, "expected 4 EFA devices (p4d.24xlarge), found 0 (0 in /dev/infiniband); expected 8 NVIDIA GPUs"),
])
def test_every_shortfall_is_named_with_its_counts(tmp_path, efa, gpus, listed, message):
    fi_info(tmp_path, efa=listed)
    launcher(tmp_path, "torchrun")
    ran = run(tmp_path, node_command(*stack({})), stand_in_devices(efa, gpus))
    assert (ran.rc, ran.launched) == (1, False)
    assert f"EFA check failed on {WHERE}: " in ran.log and message in ran.log


def test_with_efa_check_off_a_shortfall_is_a_warning(tmp_path):
    fi_info(tmp_path)
    launcher(tmp_path, "torchrun")
    ran = run(tmp_path, node_command(*stack({"efaCheck": False})), stand_in_devices(3, 8))
    assert ran.rc == 0 and ran.launched
    assert (f"warning: EFA check on {WHERE}: expected 4 EFA devices (p4d.24xlarge), found 3 (3 in /dev/infiniband); "
            "efaCheck is false, so the launch goes on") in ran.log


@pytest.mark.parametrize("itype,version,forced", [
    ("p4d.24xlarge", "1.17.1amzn1.0", "1"),  # GPUDirect RDMA type, libfabric before 1.18: needed and safe
    ("p4d.24xlarge", "1.18.0", None),  # libfabric follows the device
    ("p5.4xlarge", "1.17.1amzn1.0", None),  # no GPUDirect RDMA on this type (aws-ofi-nccl's table): never forced
])
def test_device_rdma_is_forced_only_where_needed_and_safe(tmp_path, itype, version, forced):
    fi_info(tmp_path, version=version)
    launcher(tmp_path, "torchrun")
    cfg, job = stack({"nodes": 1}, instance_type=itype)
    accel = cfg.catalog().get(itype)
    ran = run(tmp_path, node_command(cfg, job), stand_in_devices(accel.maximum_efa_interfaces, accel.accelerator.count))
    assert ran.rc == 0, ran.log
    assert ran.env.get("FI_EFA_USE_DEVICE_RDMA") == forced


def test_a_pod_whose_nccl_is_on_sockets_is_stopped(tmp_path):
    fi_info(tmp_path)
    launcher(tmp_path, "torchrun", prints=GOLDEN / "nccl-21_socket.log")
    ran = run(tmp_path, node_command(*stack({})), stand_in_devices(4, 8))
    assert ran.rc == 3 and ran.launched
    assert f"error: EFA transport check failed on {WHERE}: NCCL uses Socket, not the aws-ofi-nccl plugin" in ran.log


def test_a_p5_pod_on_nccl_2_21_with_the_ofi_plugin_by_name_goes_on(tmp_path):
    """NCCL 2.21.5 with NCCL_NET_PLUGIN=ofi logs `No plugin found (ofi)`, then loads libnccl-net-ofi.so: healthy."""
    log = GOLDEN / "nccl-21_efa.log"
    assert "NET/Plugin: No plugin found (ofi)" in log.read_text()
    fi_info(tmp_path)
    launcher(tmp_path, "torchrun", prints=log)
    cfg, job = stack({"env": {"NCCL_NET_PLUGIN": "ofi"}}, instance_type="p5.48xlarge")  # the env is the container's, not the command's
    ran = run(tmp_path, node_command(cfg, job), stand_in_devices(32, 8))
    assert ran.rc == 0, ran.log
    assert (f"EFA transport check passed on {WHERE}: NCCL uses Libfabric (aws-ofi-nccl 1.13.2-aws), provider efa, "
            "32 NICs") in ran.log


# --- MPIJob: workers check the node; the launcher calls the binary by absolute path ------------------


def mpijob(job: dict | None = None) -> dict:
    cfg, j = stack({"launcher": "nccl-tests", "kind": "mpijob", "command": [], **(job or {})})
    (doc,) = launch.render_manifests(cfg, j)
    return {role: spec["template"]["spec"]["containers"][0]["command"] for role, spec in doc["spec"]["mpiReplicaSpecs"].items()}


NCCL_TESTS_IMAGE = ("mount -t tmpfs none /opt && mkdir -p /opt/nccl-tests/build && "
                    "printf '#!/bin/sh\\n' > /opt/nccl-tests/build/all_reduce_perf && chmod +x /opt/nccl-tests/build/all_reduce_perf")


def test_mpijob_launcher_calls_nccl_tests_by_absolute_path(tmp_path):
    # As in awsome-distributed-training's nccl-tests image: /opt/nccl-tests/build, off PATH.
    launcher(tmp_path, "mpirun")
    (tmp_path / "bin" / "mpirun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "argv"))}\n')
    ran = run(tmp_path, mpijob()["Launcher"], NCCL_TESTS_IMAGE)
    assert ran.rc == 0, ran.log
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[-9:] == ["/opt/nccl-tests/build/all_reduce_perf", "-b", "8", "-e", "2G", "-f", "2", "-g", "1"]


def test_mpijob_launcher_names_a_missing_binary(tmp_path):
    launcher(tmp_path, "mpirun")
    ran = run(tmp_path, mpijob()["Launcher"], "mount -t tmpfs none /opt")
    assert ran.rc == 1 and not ran.launched
    assert "error: all_reduce_perf is neither on PATH (" in ran.log and "nor in /opt/nccl-tests/build" in ran.log


def test_mpijob_worker_checks_the_node_before_sshd(tmp_path):
    fi_info(tmp_path)
    sshd = f"mount -t tmpfs none /usr/sbin && printf '#!/bin/sh\\ntouch {tmp_path}/launched\\n' > /usr/sbin/sshd && chmod +x /usr/sbin/sshd"
    worker = mpijob()["Worker"]
    ran = run(tmp_path, worker, f"{stand_in_devices(3, 8)} && {sshd}")
    assert (ran.rc, ran.launched) == (1, False)
    assert f"EFA check failed on {WHERE}: expected 4 EFA devices (p4d.24xlarge), found 3" in ran.log
    ran = run(tmp_path, worker, f"{stand_in_devices(4, 8)} && {sshd}")
    assert (ran.rc, ran.launched) == (0, True)

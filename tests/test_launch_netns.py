"""The EC2 node script, run for real: two network namespaces joined by a veth
pair play two nodes of a fleet, and torchrun / accelerate form a gloo group
across them. Needs root (network namespaces) and iproute2."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from components.planning import config, launch
from conftest import stand_in_devices

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

VENV_BIN = Path(sys.executable).parent  # torchrun and accelerate live beside the interpreter
SUBNET = ("10.213.7.1", "10.213.7.2")  # a /30, only inside the namespaces made here
RUN_TIMEOUT = 120
_counter = itertools.count()

TRAIN = '''
import json, os, sys
from datetime import timedelta
import torch

out, mode = sys.argv[1], sys.argv[2]
if mode == "accelerate":
    from accelerate import Accelerator, InitProcessGroupKwargs
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    rank, world = acc.process_index, acc.num_processes
    total = acc.reduce(torch.tensor([rank + 1.0]), reduction="sum").item()
    acc.end_training()  # a live gloo group at interpreter exit can abort the process
else:
    import torch.distributed as dist
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    total = t.item()
    dist.destroy_process_group()
names = ["NODE_RANK", "NODES_NUM", "NODES_IPS", "MASTER_ADDR", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME",
         "NCCL_NET", "NCCL_DEBUG", "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA"]
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": world, "sum": total, "args": sys.argv[3:],
               "env": {k: os.environ.get(k) for k in names}}, f)
'''


@dataclass(frozen=True)
class Node:
    ns: str
    ip: str
    ifname: str


def sh(*args: str) -> None:
    subprocess.run(args, check=True, timeout=30, capture_output=True)


@pytest.fixture
def nodes(request) -> list[Node]:
    """Two namespaces, one veth pair; removed at the end, also on failure."""
    tag = f"{os.getpid()}x{next(_counter)}"
    made: list[str] = []

    def teardown() -> None:
        for ns in made:
            # torchrun starts its workers in sessions of their own: end every process in the namespace.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)

    request.addfinalizer(teardown)
    out = [Node(f"efal{tag}{s}", ip, f"ve{tag}{s}") for s, ip in zip("ab", SUBNET)]
    for n in out:
        sh("ip", "netns", "add", n.ns)
        made.append(n.ns)
    a, b = out
    sh("ip", "link", "add", a.ifname, "netns", a.ns, "type", "veth", "peer", "name", b.ifname, "netns", b.ns)
    for n in out:
        sh("ip", "-n", n.ns, "addr", "add", f"{n.ip}/30", "dev", n.ifname)
        sh("ip", "-n", n.ns, "link", "set", n.ifname, "up")
        sh("ip", "-n", n.ns, "link", "set", "lo", "up")
    return out


def stack(job: dict, *, nodes: int = 2) -> tuple[config.StackConfig, config.JobConfig]:
    cfg = config.load({
        "region": "us-east-1",
        "fleets": [{"name": "gpu", "instanceType": "p4d.24xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": nodes}}],
        "jobs": [{"name": "train", "fleet": "gpu", "procsPerNode": 1, **job}],
    })
    return cfg, cfg.jobs[0]


@dataclass
class Result:
    rc: int
    log: str


def run_on(nodes: list[Node], tmp_path: Path, job: dict, *, args: tuple[str, ...] = (), env: dict | None = None,
           wrap: Callable[[list[str]], list[str]] | None = None, stack_name: str = "dev") -> list[Result]:
    """Render the job's script and run it on the given nodes at once, bounded by RUN_TIMEOUT."""
    cfg, job_cfg = stack(job)
    script = tmp_path / "launch.sh"
    script.write_text(launch.render_node_script(cfg, job_cfg, stack=stack_name))
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    base_env = {"PATH": f"{stubs}:{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": str(tmp_path), **(env or {})}
    procs, logs = [], []
    for n in nodes:
        cmd = ["bash", str(script), *args]
        log = tmp_path / f"{n.ns}.log"
        logs.append(log)
        with log.open("w") as f:
            procs.append(subprocess.Popen(["ip", "netns", "exec", n.ns, *(wrap(cmd) if wrap else cmd)], env=base_env,
                                          stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"launch did not finish in {RUN_TIMEOUT}s:\n" + "\n".join(log.read_text() for log in logs))
    return [Result(p.returncode, log.read_text()) for p, log in zip(procs, logs)]


def hostfile(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "hosts"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_job(tmp_path: Path, mode: str, *extra: str) -> tuple[Path, list[str]]:
    out = tmp_path / "out"
    out.mkdir()
    train = tmp_path / "train.py"
    train.write_text(TRAIN)
    return out, [str(train), str(out), mode, *extra]


def results(out: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def assert_ok(res: list[Result]) -> None:
    assert [r.rc for r in res] == [0] * len(res), "\n----\n".join(r.log for r in res)


def stub(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


# --- real launches ------------------------------------------------------------------


def test_torchrun_across_two_nodes(nodes, tmp_path):
    trap = tmp_path / "pwned"
    odd = f"it's $(touch {trap}) \"quoted\""  # reaches the script untouched, runs nothing
    out, command = train_job(tmp_path, "torch", odd)
    # Listed out of order and with comments: every node must still agree on the ranks.
    hosts = hostfile(tmp_path, ["# the fleet", f"{SUBNET[1]}  # node b", "", SUBNET[0]])
    res = run_on(nodes, tmp_path, {"launcher": "torchrun", "command": command, "efa": False}, args=(str(hosts),))
    assert_ok(res)
    ranks = results(out)
    assert sorted(ranks) == [0, 1]
    for rank, r in ranks.items():
        assert (r["world"], r["sum"]) == (2, 3.0)  # 1 + 2: both ranks took part
        node = nodes[rank]  # the lower address is node 0
        assert r["env"]["NODE_RANK"] == str(rank)
        assert r["env"]["MASTER_ADDR"] == SUBNET[0]
        assert r["env"]["NODES_IPS"] == f"{SUBNET[0]}\n{SUBNET[1]}"
        assert r["env"]["GLOO_SOCKET_IFNAME"] == r["env"]["NCCL_SOCKET_IFNAME"] == node.ifname
        assert r["env"]["NCCL_NET"] == "Socket" and r["env"]["FI_PROVIDER"] is None
        assert r["args"] == [odd]
    assert not trap.exists()
    assert f"node 0 of 2: {SUBNET[0]} on {nodes[0].ifname}" in res[0].log


def test_accelerate_across_two_nodes(nodes, tmp_path):
    out, command = train_job(tmp_path, "accelerate")
    hosts = hostfile(tmp_path, list(SUBNET))
    job = {"launcher": "accelerate", "command": command, "efa": False, "env": {"ACCELERATE_USE_CPU": "true"}}
    res = run_on(nodes, tmp_path, job, env={"HOSTFILE": str(hosts)})  # the hostfile from the environment
    assert_ok(res)
    ranks = results(out)
    assert sorted(ranks) == [0, 1]
    for r in ranks.values():
        assert (r["world"], r["sum"]) == (2, 3.0)


# --- the EFA check ------------------------------------------------------------------


def test_missing_efa_devices_stop_the_launch(nodes, tmp_path):
    out, command = train_job(tmp_path, "torch")
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "torchrun", "command": command}, args=(str(hosts),))
    assert res[0].rc != 0
    assert "EFA check failed on node 10.213.7.1: expected 4 EFA devices (p4d.24xlarge), found 0" in res[0].log
    assert "efaCheck: false" in res[0].log
    assert not results(out)  # nothing was launched


def test_efa_check_off_warns_and_runs(nodes, tmp_path):
    out, command = train_job(tmp_path, "torch")
    hosts = hostfile(tmp_path, list(SUBNET))
    # One node of the two: node b has nothing to do; job.env beats the derived NCCL_DEBUG.
    job = {"launcher": "torchrun", "command": command, "efaCheck": False, "nodes": 1, "env": {"NCCL_DEBUG": "WARN"}}
    res = run_on(nodes, tmp_path, job, args=(str(hosts),))
    assert_ok(res)
    assert "warning: EFA check on node 10.213.7.1: expected 4 EFA devices (p4d.24xlarge), found 0" in res[0].log
    assert "the job runs on the first 1: nothing to do here" in res[1].log
    ranks = results(out)
    assert list(ranks) == [0]
    assert (ranks[0]["world"], ranks[0]["sum"]) == (1, 1.0)
    # The plugin selects the provider itself; no libfabric here to say RDMA must be forced.
    assert ranks[0]["env"]["FI_PROVIDER"] is None and ranks[0]["env"]["FI_EFA_USE_DEVICE_RDMA"] is None
    assert ranks[0]["env"]["NCCL_DEBUG"] == "WARN"


def private_mounts(setup: str):
    """Run a command after `setup` (shell) in a private mount namespace: what it mounts, only the command sees."""
    def wrap(cmd: list[str]) -> list[str]:
        return ["unshare", "--mount", "sh", "-c", f"{setup} && exec \"$@\"", "sh", *cmd]
    return wrap


def fake_infiniband(count: int, gpus: int = 8):
    """A node with `count` EFA devices and `gpus` GPUs (a p4d.24xlarge has 4 and 8)."""
    return private_mounts(stand_in_devices(count, gpus))


@pytest.mark.parametrize("devices,fi_info,message", [
    (2, None, "on node 10.213.7.1: expected 4 EFA devices (p4d.24xlarge), found 2 (2 in /dev/infiniband)"),
    (4, "exit 1\n", "found 0 (4 in /dev/infiniband, but libfabric lists no efa provider"),
])
def test_efa_check_counts_devices(nodes, tmp_path, devices, fi_info, message):
    if fi_info:
        stub(tmp_path, "fi_info", fi_info)
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests"}, args=(str(hosts),), wrap=fake_infiniband(devices))
    assert res[0].rc != 0
    assert message in res[0].log


def record(tmp_path: Path, name: str, then: str = "") -> None:
    """A stub that writes its arguments and environment next to the test's files, then runs `then`."""
    base = shlex.quote(str(tmp_path / name))
    stub(tmp_path, name, f'printf "%s\\n" "$@" > {base}.args\nenv > {base}.env\n{then}')


# --- nccl-tests: real Open MPI across the two namespaces ---------------------------------
# What cannot run here is AWS and the peers' sshd. The aws stub answers EC2 from a
# table and keeps the keys Instance Connect is given; the ssh stand-in lets a login
# through only with the key pushed for that instance and user (as the
# ec2-instance-connect package does), then runs the command on that host (its
# namespace) in a fresh login environment. mpirun, its daemons and the ranks are real.

INSTANCE_IDS = {SUBNET[0]: "i-0a0a0a0a0a0a0a0a0", SUBNET[1]: "i-0b0b0b0b0b0b0b0b1"}

# Both stubs: note the call, read the world (bin/ lies in the test's directory).
STUB_HEAD = r"""
import json, os, pathlib, shutil, subprocess, sys
here = pathlib.Path(__file__).resolve().parent.parent
args = sys.argv[1:]
with open(here / f"{pathlib.Path(__file__).name}.calls", "a") as f:
    f.write(json.dumps(args) + "\n")
world = json.loads((here / "world.json").read_text())
"""

AWS = r"""
def arg(name):
    return args[args.index(name) + 1]
if args[:2] == ["ec2", "describe-instances"]:  # the fleet's instances; answers like --output text, in no order
    if "InstanceId" in arg("--query"):
        print("\n".join(f"{ip}\t{world['ids'][ip]}" for ip in reversed(world["ips"]) if ip in world["ids"]))
    else:
        print("\t".join(reversed(world["ips"])))
elif args[:2] == ["ec2", "describe-instance-topology"]:  # network nodes from world["topology"] (none: the API says nothing)
    asked = args[args.index("--instance-ids") + 1:args.index("--query")]
    ip_of = {i: ip for ip, i in world["ids"].items()}
    print("\n".join(f"{i}\t{','.join(world.get('topology', {}).get(ip_of[i], []))}" for i in asked))
elif args[:2] == ["ec2-instance-connect", "send-ssh-public-key"]:
    if arg("--instance-id") in world.get("refuse", []):
        sys.exit("An error occurred (AccessDeniedException) when calling the SendSSHPublicKey operation")
    (here / "pushed").mkdir(exist_ok=True)
    shutil.copy(arg("--ssh-public-key").removeprefix("file://"),
                here / "pushed" / f"{arg('--instance-id')}.{arg('--instance-os-user')}.pub")
    print(json.dumps({"RequestId": "r-1", "Success": True}))
else:
    sys.exit(f"aws stub: no answer for {args}")
"""

SSH = r"""
key = user = None
while args[0].startswith("-"):  # of ssh's options, mpirun passes -x (no X11) and those of the agent
    if args[0] in ("-i", "-l", "-o", "-p"):
        opt, value, args = args[0], args[1], args[2:]
        key, user = (value, user) if opt == "-i" else (key, value) if opt == "-l" else (key, user)
    else:
        args = args[1:]
host, command = args[0], " ".join(args[1:])
pushed = here / "pushed" / f"{world['ids'].get(host)}.{user}.pub"
public = subprocess.run(["ssh-keygen", "-y", "-f", key], capture_output=True, text=True).stdout.split()[:2]
if not pushed.exists() or pushed.read_text().split()[:2] != public:
    sys.exit(f"{user}@{host}: Permission denied (publickey).")
login = ["PATH=/usr/bin:/bin", f"HOME={here}", f"USER={user}", f"LOGNAME={user}", "SHELL=/bin/sh"]  # what sshd sets
os.execvp("ip", ["ip", "netns", "exec", world["ns"][host], "env", "-i", *login, "sh", "-c", command])
"""

RANK = """
import json, os, subprocess, sys
rank = os.environ["OMPI_COMM_WORLD_RANK"]
names = ["OMPI_COMM_WORLD_SIZE", "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA", "NCCL_SOCKET_IFNAME", "NCCL_DEBUG"]
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"addrs": subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout,
               "args": sys.argv[2:], "env": {k: os.environ.get(k) for k in names}}, f)
"""


def aws_world(tmp_path: Path, nodes: list[Node], *, ids: dict | None = None, refuse: tuple[str, ...] = (),
              topology: dict | None = None) -> None:
    """The stubs for aws, ssh, the node's login user and nccl-tests, and the world they answer from."""
    world = {"ips": list(SUBNET), "ids": INSTANCE_IDS if ids is None else ids, "refuse": list(refuse),
             "ns": {n.ip: n.ns for n in nodes}, "topology": topology or {}}
    (tmp_path / "world.json").write_text(json.dumps(world))
    for name, body in (("aws", AWS), ("ssh", SSH)):
        path = tmp_path / "bin" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!{sys.executable}\n{STUB_HEAD}{body}")
        path.chmod(0o755)
    stub(tmp_path, "getent", 'echo "ec2-user:x:1000:1000::/home/ec2-user:/bin/bash"\n')
    stub(tmp_path, "all_reduce_perf", "exit 0\n")


def calls(tmp_path: Path, name: str) -> list[list[str]]:
    path = tmp_path / f"{name}.calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_nccl_tests_start_every_rank_from_node_0_with_real_mpirun(nodes, tmp_path):
    aws_world(tmp_path, nodes)
    # A libfabric older than 1.18 on a GPUDirect RDMA type: the one case FI_EFA_USE_DEVICE_RDMA=1 is set.
    stub(tmp_path, "fi_info", 'if [ "$1" = --version ]; then echo "libfabric: 1.17.1amzn1.0"; fi\n')
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "rank.py").write_text(RANK)
    hosts = hostfile(tmp_path, list(SUBNET))
    job = {"launcher": "nccl-tests", "procsPerNode": 2, "command": [sys.executable, str(tmp_path / "rank.py"), str(out), "-b", "8"]}
    res = run_on(nodes, tmp_path, job, args=(str(hosts),), wrap=fake_infiniband(4))
    assert_ok(res)
    assert "node 0 (10.213.7.1) starts every rank with mpirun" in res[1].log
    ranks = results(out)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, r in ranks.items():
        # -H a:2,b:2: ranks 0-1 on node a, 2-3 on node b
        assert f"inet {SUBNET[rank // 2]}/" in r["addrs"]
        assert r["args"] == ["-b", "8"]
        # The EFA settings reach the ranks on node b through mpirun, not through ssh's fresh environment.
        assert r["env"] == {"OMPI_COMM_WORLD_SIZE": "4", "FI_PROVIDER": None, "FI_EFA_USE_DEVICE_RDMA": "1",
                            "NCCL_SOCKET_IFNAME": nodes[0].ifname, "NCCL_DEBUG": "INFO"}
    # One key, pushed to node b only, for the login user; node 0 logged in with it.
    # Each node lists the fleet and asks for its topology (the ranks' order); node 0 lists it again for the key.
    assert sorted(c[:2] for c in calls(tmp_path, "aws")) == [
        ["ec2", "describe-instance-topology"]] * 2 + [["ec2", "describe-instances"]] * 3 + [["ec2-instance-connect", "send-ssh-public-key"]]
    assert "ranks follow address order: DescribeInstanceTopology has no network nodes for these 2 instances" in res[0].log
    assert sorted(p.name for p in (tmp_path / "pushed").iterdir()) == [f"{INSTANCE_IDS[SUBNET[1]]}.ec2-user.pub"]
    (login,) = calls(tmp_path, "ssh")
    assert login[login.index("-l") + 1] == "ec2-user" and SUBNET[1] in login
    assert not any("--tree-spawn" in a for a in login)  # node b has no key to reach further nodes
    assert not Path(login[login.index("-i") + 1]).exists()  # the launch's key is gone when it ends


@pytest.mark.parametrize("ids,refuse,message", [
    ({SUBNET[0]: INSTANCE_IDS[SUBNET[0]]}, (), "no running instance of fleet gpu in us-east-1 has the address 10.213.7.2 (from"),
    (None, (INSTANCE_IDS[SUBNET[1]],), f"EC2 Instance Connect took no key for 10.213.7.2 ({INSTANCE_IDS[SUBNET[1]]})"),
])
def test_a_peer_without_a_key_stops_the_launch(nodes, tmp_path, ids, refuse, message):
    aws_world(tmp_path, nodes, ids=ids, refuse=refuse)
    record(tmp_path, "mpirun")
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False}, args=(str(hosts),))
    assert res[0].rc != 0
    assert message in res[0].log
    assert not (tmp_path / "mpirun.args").exists()


def test_no_login_user_to_reach_the_peers_as_is_named(nodes, tmp_path):
    aws_world(tmp_path, nodes)
    stub(tmp_path, "getent", "exit 2\n")  # getent's answer when uid 1000 does not exist
    record(tmp_path, "mpirun")
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False}, args=(str(hosts),))
    assert res[0].rc != 0
    assert "no login user (uid 1000) on this node to reach the other nodes as" in res[0].log


def test_a_refused_key_shows_a_hint_when_mpirun_fails(nodes, tmp_path):
    aws_world(tmp_path, nodes)
    record(tmp_path, "mpirun", then="echo 'ec2-user@10.213.7.2: Permission denied (publickey).' >&2; exit 3\n")
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False}, args=(str(hosts),))
    assert res[0].rc == 3
    assert "mpirun failed (exit 3); if it says 'Permission denied (publickey)', the AMI lacks the ec2-instance-connect package" in res[0].log


def test_a_job_with_its_own_ssh_agent_pushes_no_key(nodes, tmp_path):
    record(tmp_path, "mpirun")
    stub(tmp_path, "all_reduce_perf", "exit 0\n")
    hosts = hostfile(tmp_path, list(SUBNET))
    job = {"launcher": "nccl-tests", "efa": False, "env": {"OMPI_MCA_plm_rsh_agent": "ssh -i /etc/fleet-key"}}
    res = run_on(nodes[:1], tmp_path, job, args=(str(hosts),))  # no aws stub: the aws CLI is not needed
    assert_ok(res)
    assert "the job's env sets mpirun's SSH agent; no key is pushed" in res[0].log
    env = dict(line.split("=", 1) for line in (tmp_path / "mpirun.env").read_text().splitlines() if "=" in line)
    assert env["OMPI_MCA_plm_rsh_agent"] == "ssh -i /etc/fleet-key" and "PRTE_MCA_plm_ssh_agent" not in env


# --- what SSM's bare shell lacks ----------------------------------------------------


def test_nccl_tests_binary_is_found_where_the_dlami_keeps_it(nodes, tmp_path):
    record(tmp_path, "mpirun")
    hosts = hostfile(tmp_path, list(SUBNET))
    # Two CUDAs, the default one by its symlink, as the DLAMI lays them out.
    dlami = private_mounts(
        "mount -t tmpfs none /usr/local && for v in 12.9 13.0; do d=/usr/local/cuda-$v/efa/test-cuda-$v; "
        "mkdir -p $d && printf '#!/bin/sh\\n' > $d/all_reduce_perf && chmod +x $d/all_reduce_perf; done "
        "&& ln -s cuda-13.0 /usr/local/cuda")
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False, "nodes": 1}, args=(str(hosts),), wrap=dlami)
    assert_ok(res)
    args = (tmp_path / "mpirun.args").read_text().splitlines()
    assert args[-9:] == ["/usr/local/cuda/efa/test-cuda-13.0/all_reduce_perf", "-b", "8", "-e", "2G", "-f", "2", "-g", "1"]


def test_a_missing_nccl_tests_binary_is_named(nodes, tmp_path):
    record(tmp_path, "mpirun")
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False, "nodes": 1}, args=(str(hosts),),
                 wrap=private_mounts("mount -t tmpfs none /usr/local"))
    assert res[0].rc != 0
    assert "all_reduce_perf is neither on PATH nor among the DLAMI's nccl-tests" in res[0].log
    assert not (tmp_path / "mpirun.args").exists()


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_a_launcher_missing_from_path_is_named(nodes, tmp_path, launcher):
    out, command = train_job(tmp_path, "torch")
    hosts = hostfile(tmp_path, list(SUBNET))
    # A PATH without the venv: as on an AMI where nothing installed the launcher.
    res = run_on(nodes[:1], tmp_path, {"launcher": launcher, "command": command, "efa": False}, args=(str(hosts),),
                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert res[0].rc != 0
    assert f"error: {launcher} is not on PATH (" in res[0].log
    assert not results(out)


def test_the_login_environment_reaches_the_launch(nodes, tmp_path):
    # What the EFA installer's /etc/profile.d gives a login shell, and SSM's shell lacks.
    profile = tmp_path / "profile"
    profile.write_text("PATH=/opt/amazon/openmpi/bin:/usr/bin:/bin\n"
                       "LD_LIBRARY_PATH=/opt/amazon/ofi-nccl/lib64:/opt/amazon/efa/lib64; export PATH LD_LIBRARY_PATH\n")
    record(tmp_path, "mpirun")
    stub(tmp_path, "all_reduce_perf", "exit 0\n")
    hosts = hostfile(tmp_path, list(SUBNET))
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False, "nodes": 1}, args=(str(hosts),),
                 wrap=private_mounts(f"mount --bind {profile} /etc/profile"))
    assert_ok(res)
    env = dict(line.split("=", 1) for line in (tmp_path / "mpirun.env").read_text().splitlines() if "=" in line)
    assert env["LD_LIBRARY_PATH"] == "/opt/amazon/ofi-nccl/lib64:/opt/amazon/efa/lib64"
    assert env["PATH"].startswith(f"{tmp_path / 'bin'}:") and env["PATH"].endswith(":/opt/amazon/openmpi/bin:/usr/bin:/bin")
    args = (tmp_path / "mpirun.args").read_text().splitlines()
    assert {args[i + 1] for i, a in enumerate(args) if a == "-x"} >= {"PATH", "LD_LIBRARY_PATH"}  # to the ranks too


# --- finding the nodes -------------------------------------------------------------


def test_without_a_hostfile_the_fleet_comes_from_ec2(nodes, tmp_path):
    aws_world(tmp_path, nodes)
    record(tmp_path, "mpirun")
    res = run_on(nodes, tmp_path, {"launcher": "nccl-tests", "efa": False}, stack_name="research")
    assert_ok(res)
    fleet_filters = ["--region", "us-east-1", "--filters", "Name=tag:efa-infra:fleet,Values=gpu",
                     "Name=tag:efa-infra:stack,Values=research", "Name=instance-state-name,Values=running"]
    made = calls(tmp_path, "aws")  # both nodes list the fleet; node 0 then finds its peers' instances
    assert made.count(["ec2", "describe-instances", *fleet_filters,
                       "--query", "Reservations[].Instances[].PrivateIpAddress", "--output", "text"]) == 2
    assert ["ec2", "describe-instances", *fleet_filters,
            "--query", "Reservations[].Instances[].[PrivateIpAddress,InstanceId]", "--output", "text"] in made
    args = (tmp_path / "mpirun.args").read_text().splitlines()
    assert args[args.index("-H") + 1] == f"{SUBNET[0]}:1,{SUBNET[1]}:1"


@pytest.mark.parametrize("lines,message", [
    (["10.213.7.5", "10.213.7.6"], "none of this node's addresses"),
    ([SUBNET[0]], "the job runs on 2 nodes but"),
    ([SUBNET[0], "node-b"], "'node-b' from"),
])
def test_a_bad_node_list_fails_clearly(nodes, tmp_path, lines, message):
    hosts = hostfile(tmp_path, lines)
    res = run_on(nodes[:1], tmp_path, {"launcher": "nccl-tests", "efa": False}, args=(str(hosts),))
    assert res[0].rc != 0
    assert message in res[0].log


# --- the working directory -----------------------------------------------------------


def test_a_relative_command_runs_in_the_working_directory(nodes, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(TRAIN)
    out = tmp_path / "out"
    out.mkdir()
    hosts = hostfile(tmp_path, list(SUBNET))
    job = {"launcher": "torchrun", "command": ["train.py", str(out), "torch"], "efa": False, "nodes": 1,
           "workingDirectory": str(work)}
    res = run_on(nodes[:1], tmp_path, job, args=(str(hosts),))  # started from the repository, not from work/
    assert_ok(res)
    assert list(results(out)) == [0]
    res = run_on(nodes[:1], tmp_path, {**job, "workingDirectory": str(tmp_path / "nowhere")}, args=(str(hosts),))
    assert res[0].rc != 0
    assert f"cannot enter the job's workingDirectory {tmp_path / 'nowhere'} on 10.213.7.1" in res[0].log


def test_ranks_follow_the_network_topology(nodes, tmp_path):
    # Node b sits under the layer-3 network node that sorts first: it becomes rank 0, the master.
    aws_world(tmp_path, nodes, topology={SUBNET[0]: ["nn-1", "nn-2", "nn-3b"], SUBNET[1]: ["nn-1", "nn-2", "nn-3a"]})
    record(tmp_path, "mpirun")
    res = run_on(nodes, tmp_path, {"launcher": "nccl-tests", "efa": False})
    assert_ok(res)
    assert "ranks follow the network: 2 of 2 nodes ordered by their network nodes" in res[0].log
    assert f"node 0 of 2: {SUBNET[1]}" in res[1].log and f"node 1 of 2: {SUBNET[0]}" in res[0].log
    args = (tmp_path / "mpirun.args").read_text().splitlines()
    assert args[args.index("-H") + 1] == f"{SUBNET[1]}:1,{SUBNET[0]}:1"

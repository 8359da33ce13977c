"""Which transport NCCL used: public NCCL log excerpts (tests/data/nccl/transport,
sources in its README) read by nccl-report and by the shell check that watches a
job, which stops a job meant for EFA once NCCL shows it is not on EFA."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.offline import nccl_report
from components.planning import nccl_log, preflight

DATA = Path(__file__).resolve().parent / "data" / "nccl"
LOGS = DATA / "transport"
GOLDEN = DATA / "golden"
T = nccl_log.Transport
OFI_TCP = "not the aws-ofi-nccl plugin: the run goes over TCP, not EFA"

# file: what it says, and what is wrong for a p5en.48xlarge job (16 EFA devices). Excerpts whose only
# network hint is NCCL's fallback text name no network: that text is context, not a verdict.
CASES = {
    "efa_p5en.log": (T("Libfabric", None, "efa", 16), None),
    "efa_p4d.log": (T(None, None, "efa", 4), None),  # no line names the network: nothing to judge
    "efa_version_mpirun.log": (T("AWS Libfabric", "1.9.1-aws", None, None), None),
    "cxi_provider.log": (T("AWS Libfabric", None, "cxi", 8), "NCCL uses the aws-ofi-nccl plugin with provider cxi, not efa"),
    "socket_plugin_failed.log": (T(None, None, None, None, fallback=True), None),
    "socket_no_plugin.log": (T(None, None, None, None), None),  # NCCL 2.4's text, older than any version read
    "socket_internal_plugin.log": (T(None, None, None, None, fallback=True), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_log_names_the_transport(name):
    want, problem = CASES[name]
    got = nccl_log.transport((LOGS / name).read_text())
    assert got == want
    assert nccl_log.problem(got, 16) == problem


def test_every_excerpt_is_covered_and_cited():
    readme = (LOGS / "README.md").read_text()
    assert sorted(p.name for p in LOGS.glob("*.log")) == sorted(CASES)
    assert all(f"`{name}`" in readme for name in CASES)


def test_fewer_nics_than_the_type_has_is_a_problem():
    t = nccl_log.transport((LOGS / "efa_p5en.log").read_text())
    assert nccl_log.problem(t, 32) == "the aws-ofi-nccl plugin found 16 EFA NICs, expected 32"
    assert nccl_log.problem(t, 16) is None


# --- the shell check ------------------------------------------------------------------


def watch(tmp_path: Path, log: Path, *, expected: int = 16, strict: bool = True, then: str = "sleep 20") -> tuple[int, str, float]:
    """Run a stand-in launcher that prints `log`, then `then`, then writes tmp_path/finished, under the check."""
    launcher = f"cat {shlex.quote(str(log))}; {then}; touch {shlex.quote(str(tmp_path / 'finished'))}"
    script = ("JOB=train\nEFA_WHERE='pod train-0 on node ip-10-0-0-1'\n"
              + preflight.transport_check(efa_devices=expected, strict=strict)
              + f"efa_infra_watch sh -c {shlex.quote(launcher)}\n")
    start = time.monotonic()
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


@pytest.mark.parametrize("name", sorted(n for n, (_, problem) in CASES.items() if problem))
def test_a_job_not_on_efa_is_stopped_with_the_reason(tmp_path, name):
    rc, out, took = watch(tmp_path, LOGS / name)
    assert rc == preflight.TRANSPORT_FAILED
    assert (f"efa-infra[train]: error: EFA transport check failed on pod train-0 on node ip-10-0-0-1: "
            f"{CASES[name][1]}. The job is stopped") in out
    assert took < 15 and not (tmp_path / "finished").exists()  # stopped, not left to run over TCP


@pytest.mark.parametrize("name", sorted(n for n, (t, problem) in CASES.items() if not problem))
def test_a_job_not_stopped_runs_to_the_end_with_its_output_intact(tmp_path, name):
    rc, out, _ = watch(tmp_path, LOGS / name, then="echo after; exit 7")
    assert rc == 7  # the launcher's own status
    assert "after" in out  # what the launcher printed after the verdict is passed on too
    for line in (LOGS / name).read_text().splitlines():
        assert line in out
    if CASES[name][0].network:
        assert "EFA transport check passed on pod train-0 on node ip-10-0-0-1: NCCL uses" in out
    else:
        assert "no NCCL line named the network" in out


def test_the_check_counts_nics(tmp_path):
    rc, out, _ = watch(tmp_path, LOGS / "efa_p5en.log", expected=32)
    assert rc == preflight.TRANSPORT_FAILED
    assert "the aws-ofi-nccl plugin found 16 EFA NICs, expected 32" in out
    rc, out, _ = watch(tmp_path, LOGS / "efa_p5en.log", then="true")
    assert rc == 0 and "NCCL uses Libfabric (aws-ofi-nccl version not logged), provider efa, 16 NICs" in out


def test_with_efa_check_off_it_warns_and_the_job_goes_on(tmp_path):
    rc, out, _ = watch(tmp_path, GOLDEN / "nccl-21_socket.log", strict=False, then="true")
    assert rc == 0 and (tmp_path / "finished").exists()
    assert "warning: EFA transport check on pod train-0 on node ip-10-0-0-1: NCCL uses Socket, not the aws-ofi-nccl" in out


# --- golden logs: every NCCL minor from 2.18, built from each tag's format strings ------------


def golden_cases() -> dict[str, dict]:
    return {c["file"]: c for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]}


GOLDEN_CASES = golden_cases()
GOLDEN_NICS = json.loads((GOLDEN / "cases.json").read_text())["expected_nics"]  # a p5.48xlarge's EFA devices


def test_golden_logs_cover_every_nccl_minor_and_the_plugin_releases():
    through = nccl_log._DATA["checkedThrough"]
    newest = int(through["nccl"].split(".")[1])
    minors = {int(c["nccl"].split(".")[1]) for c in GOLDEN_CASES.values()}
    assert minors == set(range(18, newest + 1))
    for minor in range(18, newest + 1):  # each minor: a run on EFA and one that fell back, both judged
        stops = {c["stops"] for c in GOLDEN_CASES.values() if int(c["nccl"].split(".")[1]) == minor and c["network"]}
        assert stops == {True, False}, minor
    versions = {c["plugin_version"] for c in GOLDEN_CASES.values()}
    assert {"1.6.0", through["awsOfiNccl"].lstrip("v")} <= versions  # oldest handled and newest release
    assert sorted(p.name for p in GOLDEN.glob("*.log")) == sorted(GOLDEN_CASES)
    assert all(c["sources"] for c in GOLDEN_CASES.values())


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_log_python_reader(name):
    case = GOLDEN_CASES[name]
    got = nccl_log.transport((GOLDEN / name).read_text())
    assert got == T(case["network"], case["plugin_version"], case["provider"], case["nics"], case["fallback"])
    assert (nccl_log.problem(got, GOLDEN_NICS) is not None) == case["stops"]


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_log_shell_check_agrees_with_the_python_reader(tmp_path, name):
    t = nccl_log.transport((GOLDEN / name).read_text())
    problem = nccl_log.problem(t, GOLDEN_NICS)
    rc, out, _ = watch(tmp_path, GOLDEN / name, expected=GOLDEN_NICS, then="exit 0" if problem is None else "sleep 20")
    where = "pod train-0 on node ip-10-0-0-1"
    if problem is not None:
        assert rc == preflight.TRANSPORT_FAILED
        assert f"error: EFA transport check failed on {where}: {problem}. The job is stopped" in out
    elif t.network is None:
        assert rc == 0
        assert ("the transport was not checked" + (nccl_log.FALLBACK_CONTEXT if t.fallback else "") + "\n") in out
    else:
        assert rc == 0
        assert (f"EFA transport check passed on {where}: NCCL uses {t.network} (aws-ofi-nccl {t.plugin_version}), "
                f"provider {t.provider}, {t.nics} NICs\n") in out


# --- nccl-report ------------------------------------------------------------------------


def report_logs(tmp_path: Path, first: str, second: str, *, second_table: str = "plain.log") -> tuple[Path, Path]:
    """Two nccl-tests logs, each an NCCL excerpt (`first`, `second`: paths under tests/data/nccl) before a results table."""
    a, b = tmp_path / "efa.log", tmp_path / "tcp.log"
    a.write_text((DATA / first).read_text() + (DATA / "plain.log").read_text())
    b.write_text((DATA / second).read_text() + (DATA / second_table).read_text())
    return a, b


def test_nccl_report_shows_each_runs_transport(tmp_path, capsys):
    efa, tcp = report_logs(tmp_path, "transport/efa_version_mpirun.log", "golden/nccl-22_socket.log")
    assert nccl_report.cli([str(efa), str(tcp)]) == 0
    captured = capsys.readouterr()
    assert "  efa: AWS Libfabric, aws-ofi-nccl 1.9.1-aws, provider (not logged)" in captured.out
    assert "  tcp: Socket" in captured.out
    assert "was meant for EFA" not in captured.out + captured.err  # the TCP baseline is the second run: no flag
    assert nccl_report.cli([str(efa), str(tcp), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert runs[0]["transport"]["plugin_version"] == "1.9.1-aws" and runs[0]["transport"]["meant_for_efa"]
    assert runs[1]["transport"]["efa"] is False and runs[1]["transport"]["problem"] is None


def test_nccl_report_fails_a_run_meant_for_efa_that_used_sockets(tmp_path, capsys):
    efa, tcp = report_logs(tmp_path, "golden/nccl-26_socket.log", "golden/nccl-26_socket.log")
    assert nccl_report.cli([str(efa), str(tcp)]) == nccl_report.NOT_ON_EFA == 4
    captured = capsys.readouterr()
    problem = f"NCCL uses Socket, {OFI_TCP}{nccl_log.FALLBACK_CONTEXT}"
    assert f"  ! efa was meant for EFA, but {problem}" in captured.out
    assert captured.err == f"error: efa was meant for EFA, but {problem}\n"
    assert nccl_report.cli([str(efa), str(tcp), "--json"]) == nccl_report.NOT_ON_EFA  # the same gate for pipelines reading JSON
    # As a pipeline runs it: the CLI's exit status is the gate's.
    done = subprocess.run([sys.executable, "-m", "components", "nccl-report", str(efa), str(tcp)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 4 and done.stderr == f"error: efa was meant for EFA, but {problem}\n"


def test_nccl_report_checks_nics_against_the_fleet(tmp_path, capsys):
    # p5-ec2's fleet is p5.48xlarge: 32 EFA devices; the p5en log found 16.
    efa, tcp = report_logs(tmp_path, "transport/efa_p5en.log", "transport/socket_no_plugin.log")
    assert nccl_report.cli([str(efa), str(tcp), "--stack", "p5-ec2", "--fleet", "p5"]) == nccl_report.NOT_ON_EFA
    assert "  ! efa was meant for EFA, but the aws-ofi-nccl plugin found 16 EFA NICs, expected 32" in capsys.readouterr().out
    assert nccl_report.cli([str(efa), str(tcp)]) == 0  # without the fleet, 16 NICs is all it can see


def test_nccl_report_warns_when_runs_are_not_comparable(tmp_path, capsys):
    # per_iter.log names all_reduce_perf (nccl-tests 2.16.7+) over 8 B..; plain.log names none: sizes differ.
    efa, other = report_logs(tmp_path, "golden/nccl-28_efa.log", "golden/nccl-28_socket.log", second_table="per_iter.log")
    assert nccl_report.cli([str(efa), str(other)]) == 0
    err = capsys.readouterr().err
    assert "warning: the runs are not comparable: efa measured 1 MiB to 1 GiB, tcp " in err
    assert nccl_report.cli([str(efa), str(other), "--strict"]) == nccl_report.NOT_COMPARABLE == 5
    assert "error: the runs are not comparable: efa measured 1 MiB to 1 GiB" in capsys.readouterr().err
    gather = tmp_path / "gather.log"
    gather.write_text((DATA / "plain.log").read_text().replace("sum ", "none"))
    assert nccl_report.cli([str(efa), str(gather), "--strict"]) == nccl_report.NOT_COMPARABLE
    assert "efa used reduction sum, gather none: different collectives" in capsys.readouterr().err
    maximum = tmp_path / "max.log"
    maximum.write_text((DATA / "plain.log").read_text().replace("sum ", "max "))
    assert nccl_report.cli([str(efa), str(maximum)]) == 0
    assert "efa used reduction sum, max max: different reduction ops" in capsys.readouterr().err
    assert nccl_report.cli([str(efa), str(efa), "--label", "a", "--label", "b", "--strict"]) == 0  # the same test twice: fine


def test_nccl_report_compares_collectives_by_name_where_the_log_names_them(tmp_path, capsys):
    reduce, gather = tmp_path / "all_reduce.log", tmp_path / "all_gather.log"
    table = (DATA / "per_iter.log").read_text()
    reduce.write_text(table)
    gather.write_text(table.replace("all_reduce_perf", "all_gather_perf"))
    assert nccl_report.cli([str(reduce), str(gather)]) == 0
    assert "warning: the runs are not comparable: all_reduce ran all_reduce_perf, all_gather ran all_gather_perf" in capsys.readouterr().err


def test_a_sigterm_to_the_launch_reaches_the_job_at_once(tmp_path):
    """A pod's deletion, an SSM cancel or a block's end sends SIGTERM to the launch shell: the job
    must get it while its output is being watched, so its own handler (a checkpoint) runs."""
    # Past NCCL's lines, so the check has passed and the rest of the output is being copied.
    job = (f"trap 'echo job-got-term; exit 0' TERM; cat {shlex.quote(str(LOGS / 'efa_p5en.log'))}; echo started; "
           "while :; do sleep 0.1; done")
    script = ("JOB=train\nEFA_WHERE=node\n" + preflight.transport_check(efa_devices=16, strict=True)
              + f"efa_infra_watch sh -c {shlex.quote(job)}\n")
    shell = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        while shell.stdout.readline().strip() != "started":
            pass
        sent = time.monotonic()
        shell.send_signal(signal.SIGTERM)
        out, _ = shell.communicate(timeout=10)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)  # the job and its watcher, when the signal did not get through
    assert "job-got-term" in out and time.monotonic() - sent < 3


@pytest.mark.parametrize("itype,gbit", [("g6e.48xlarge", 400), ("p6-b200.48xlarge", 3200)])
def test_nccl_report_line_rate_is_the_instances_stated_bandwidth(tmp_path, itype, gbit):
    (tmp_path / "Pulumi.s.yaml").write_text(
        "config:\n  aws:region: us-east-1\n  efa-infra:fleets:\n"
        f"    - {{name: f, instanceType: {itype}, availabilityZone: us-east-1a, nodes: {{desired: 2}}}}\n")
    rate = nccl_report.line_rate("s", "f", stacks_dir=tmp_path)
    assert (rate.gbit_per_s, rate.gbyte_per_s) == (gbit, gbit / 8)

"""nccl-report: parsing nccl-tests logs, the comparison table, --json, --plot, --stack/--fleet.

The logs under tests/data/nccl/ are laid out with nccl-tests' own printf formats
(src/common.cu before 2.17, src/util.cu after), so column alignment is real.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.offline import nccl_report, nccl_tests

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "nccl"

# nccl-tests all_reduce_perf -b 8 -e 2G -f 2 -g 1 on 2 x p4d.24xlarge, out-of-place
# bus bandwidth GB/s, EFA vs TCP, and the EFA speed-ups these figures give.
EFA_VS_TCP = {
    1 << 20: (4.61, 1.65, "2.79x"),
    16 << 20: (19.03, 3.22, "5.91x"),
    128 << 20: (54.94, 3.87, "14.20x"),
    1 << 30: (75.34, 4.08, "18.47x"),
    2 << 30: (77.35, 4.13, "18.73x"),
}


def run_cli(capsys, *argv):
    code = nccl_report.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def row(run, size):
    return next(r for r in run.rows if r.size_bytes == size)


def all_reduce_log(busbw_by_size: dict[int, float], ranks: int = 16) -> str:
    """all_reduce_perf output in the pre-2.17 format, in-place equal to out-of-place."""
    factor = 2 * (ranks - 1) / ranks  # all_reduce: busbw = algbw * 2(n-1)/n
    lines = [
        "# nThread 1 nGpus 1 minBytes 8 maxBytes 2147483648 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0",
        "#",
        "# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s %6s  %7s  %6s  %6s %6s"
        % ("size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong"),
        "# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %5s  %7s  %6s  %6s  %5s"
        % ("(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", ""),
    ]
    for size, busbw in busbw_by_size.items():
        algbw = busbw / factor
        us = size / algbw / 1e3 if algbw else 31.4
        time = f"{us:7.0f}" if us >= 10000 else f"{us:7.1f}" if us >= 100 else f"{us:7.2f}"
        place = "  %7s  %6.2f  %6.2f  %5g" % (time, algbw, busbw, 0)
        lines.append("%12li  %12li  %8s  %6s  %6i" % (size, size // 4, "float", "sum", -1) + place + place)
    lines += ["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : %g " % (sum(busbw_by_size.values()) / len(busbw_by_size)), "#"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def efa_tcp(tmp_path):
    # 8 B is where both measure 0.00 GB/s: no speed-up to give there.
    efa = {8: 0.0, **{s: v[0] for s, v in EFA_VS_TCP.items()}}
    tcp = {8: 0.0, **{s: v[1] for s, v in EFA_VS_TCP.items()}}
    (tmp_path / "efa.log").write_text(all_reduce_log(efa))
    (tmp_path / "tcp.log").write_text(all_reduce_log(tcp))
    return tmp_path / "efa.log", tmp_path / "tcp.log"


# --- parsing the variants ---------------------------------------------------------


def test_plain_log():
    run = nccl_tests.load_run(DATA / "plain.log")
    assert run.label == "plain"
    assert [r.size_bytes for r in run.rows] == [1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30]
    r = row(run, 16 << 20)
    assert (r.count, r.type, r.redop) == (4194304, "float", "sum")
    assert (r.oop_time_us, r.oop_algbw_gbps, r.oop_busbw_gbps) == (8171.7, 2.05, 2.05)
    assert (r.ip_time_us, r.ip_algbw_gbps, r.ip_busbw_gbps) == (8197.6, 2.05, 2.05)
    assert r.wrong == 0
    assert run.avg_busbw_gbps == 1.99993  # the footer, unrounded


def test_mpirun_prefixes_and_interleaved_rank_output():
    tagged, plain = nccl_tests.load_run(DATA / "mpirun.log"), nccl_tests.load_run(DATA / "plain.log")
    assert tagged.rows == plain.rows
    assert tagged.footer_avg_busbw_gbps == plain.footer_avg_busbw_gbps == 1.99993


def test_unchecked_run_prints_na_and_all_gather_has_no_redop():
    run = nccl_tests.load_run(DATA / "all_gather_na.log")
    assert {r.wrong for r in run.rows} == {None}
    assert {r.redop for r in run.rows} == {"none"}
    r = row(run, 64 << 20)
    assert (r.oop_algbw_gbps, r.oop_busbw_gbps, r.ip_busbw_gbps) == (213.84, 187.11, 188.45)


def test_trailing_spaces_and_tabs():
    run = nccl_tests.load_run(DATA / "trailing_spaces.log")
    assert len(run.rows) == 3
    r = row(run, 64 << 20)
    assert (r.oop_time_us, r.oop_busbw_gbps, r.ip_busbw_gbps, r.wrong) == (542.5, 92.77, 93.10, 0)
    assert run.avg_busbw_gbps == 50.5325


def test_integer_times():
    run = nccl_tests.load_run(DATA / "integer_times.log")
    r = row(run, 2 << 30)
    assert (r.oop_time_us, r.ip_time_us) == (52054.0, 51964.0)
    assert r.oop_busbw_gbps == 77.35


def test_average_without_footer_is_mean_of_both_placements(capsys):
    # integer_times.log was cut short before the footer.
    run = nccl_tests.load_run(DATA / "integer_times.log")
    assert run.footer_avg_busbw_gbps is None
    both = [63.81, 63.95, 71.22, 71.50, 75.34, 75.51, 77.35, 77.49]
    assert run.avg_busbw_gbps == pytest.approx(sum(both) / len(both))
    assert round(run.avg_busbw_gbps, 2) == 72.02  # out-of-place alone would give 71.93
    code, out, _ = run_cli(capsys, DATA / "integer_times.log")
    assert code == 0
    assert "avg busbw          72.02" in out
    assert "integer_times: the log has no Avg bus bandwidth line" in out


def test_per_iteration_columns_are_skipped_by_name():
    run = nccl_tests.load_run(DATA / "per_iter.log")
    r = row(run, 64 << 20)
    # Fixed positions would read in-place i_min/i_max here instead.
    assert (r.oop_time_us, r.oop_algbw_gbps, r.oop_busbw_gbps) == (291.50, 230.22, 402.89)
    assert (r.ip_time_us, r.ip_algbw_gbps, r.ip_busbw_gbps) == (289.89, 231.50, 405.12)
    assert run.avg_busbw_gbps == 230.384


def test_timestamp_column():
    run = nccl_tests.load_run(DATA / "timestamps.log")
    assert [(r.type, r.ip_busbw_gbps) for r in run.rows] == [("bfloat16", 61.45), ("bfloat16", 233.80)]


def test_broken_log_names_file_and_line(capsys):
    code, out, err = run_cli(capsys, DATA / "broken.log")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{DATA / 'broken.log'}: line 14: malformed data row" in err


@pytest.mark.parametrize("old, new, message", [
    # line 12 is the 16 MiB row; line 9 the unit line under the header
    ("2.05    2.05      0   8197.6", "2.05    2.o5      0   8197.6",
     "plain.log: line 12: malformed data row: out-of-place busbw is '2.o5'"),
    ("(elements)                               (us)", "(elements)                               (ms)",
     "plain.log: line 9: column time is in (ms), expected (us)"),
])
def test_bad_values_and_units(old, new, message):
    text = (DATA / "plain.log").read_text()
    assert text.count(old) == 1
    with pytest.raises(nccl_tests.ReportError) as exc:
        nccl_tests.parse_log(text.replace(old, new), "plain.log")
    assert str(exc.value) == message


def test_logs_without_rows(tmp_path):
    with pytest.raises(nccl_tests.ReportError, match=r"no_rows.log: no data rows after the results header on line 8"):
        nccl_tests.load_run(DATA / "no_rows.log")
    (tmp_path / "dmesg.log").write_text("NCCL version 2.21.5+cuda12.4\n1 warning\n")
    with pytest.raises(nccl_tests.ReportError, match=r"dmesg.log: not an nccl-tests log"):
        nccl_tests.load_run(tmp_path / "dmesg.log")


def test_repeated_size_is_refused():
    text = (DATA / "plain.log").read_text()
    with pytest.raises(nccl_tests.ReportError, match=r"twice.log: line 28: size 1048576 again \(first on line 10\)"):
        nccl_tests.parse_log(text + text, "twice.log")


# --- the comparison -------------------------------------------------------------------


def test_efa_over_tcp_speedups(capsys, efa_tcp):
    code, out, _ = run_cli(capsys, *efa_tcp)
    assert code == 0
    table = {" ".join(cells[:2]): cells[2:] for cells in (line.split() for line in out.splitlines()) if len(cells) >= 3}
    assert table["size efa"] == ["tcp", "efa", "vs", "tcp"]
    for size, (efa, tcp, up) in EFA_VS_TCP.items():
        assert table[nccl_report.human_size(size)] == [f"{efa:.2f}", f"{tcp:.2f}", up]
    assert table["8 B"] == ["0.00", "0.00", "-"]


def test_json_carries_the_figures(capsys, efa_tcp):
    code, out, _ = run_cli(capsys, *efa_tcp, "--json", "--label", "EFA", "--label", "TCP")
    assert code == 0
    doc = json.loads(out)
    assert [r["label"] for r in doc["runs"]] == ["EFA", "TCP"]
    efa = doc["runs"][0]
    assert efa["file"] == str(efa_tcp[0]) and efa["avg_busbw_from"] == "footer"
    top = efa["rows"][-1]
    assert (top["size_bytes"], top["oop_busbw_gbps"], top["ip_busbw_gbps"], top["wrong"]) == (2 << 30, 77.35, 77.35, 0)
    assert set(top) == {"size_bytes", "count", "type", "redop", "oop_time_us", "oop_algbw_gbps", "oop_busbw_gbps",
                        "ip_time_us", "ip_algbw_gbps", "ip_busbw_gbps", "wrong"}
    assert efa["avg_busbw_gbps"] == pytest.approx(sum(v[0] for v in EFA_VS_TCP.values()) / 6, abs=1e-4)
    (ups,) = doc["speedups"]
    assert ups["over"] == "TCP"
    assert {int(s): round(x, 2) for s, x in ups["by_size"].items() if x} == {
        s: float(v[2][:-1]) for s, v in EFA_VS_TCP.items()}
    assert ups["by_size"]["8"] is None
    assert doc["line_rate"] is None


def test_labels(capsys, tmp_path):
    code, out, _ = run_cli(capsys, DATA / "plain.log", DATA / "mpirun.log", "--label", "EFA", "--label", "TCP")
    assert code == 0 and "size   EFA   TCP  EFA vs TCP" in out
    code, _, err = run_cli(capsys, DATA / "plain.log", DATA / "mpirun.log", "--label", "EFA")
    assert code == 2 and err == "error: 1 --label for 2 logs; give one per LOG, in order\n"
    (tmp_path / "plain.log").write_text((DATA / "plain.log").read_text())
    code, _, err = run_cli(capsys, DATA / "plain.log", tmp_path / "plain.log")
    assert code == 2 and err == "error: two runs are labelled plain; name them with --label\n"


def test_human_sizes():
    assert [nccl_report.human_size(n) for n in (8, 1024, 3 << 20, 2 << 30, 1048512)] == [
        "8 B", "1 KiB", "3 MiB", "2 GiB", "1048512 B"]  # all_gather sizes need not be powers of 2


# --- the plot --------------------------------------------------------------------------


def test_plot_figure(tmp_path, efa_tcp):
    runs = [nccl_tests.load_run(p) for p in efa_tcp]
    fig = nccl_report.plot(runs, tmp_path / "bw.png")
    (ax,) = fig.axes
    assert "message size" in ax.get_xlabel() and "GB/s" in ax.get_ylabel() and ax.get_title()
    assert ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["efa", "tcp"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["efa", "tcp"]
    assert list(ax.get_lines()[0].get_ydata()) == [0.0, 4.61, 19.03, 54.94, 75.34, 77.35]


def test_cli_writes_png(capsys, tmp_path, efa_tcp):
    import matplotlib.image

    png = tmp_path / "bw.png"
    code, out, _ = run_cli(capsys, *efa_tcp, "--plot", png)
    assert code == 0 and "18.73x" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[:2] == (500, 800)  # 8 x 5 in at 100 dpi
    code, _, err = run_cli(capsys, *efa_tcp, "--plot", tmp_path / "no" / "such" / "dir.png")
    assert code == 3 and err.startswith("error: cannot write plot") and err.count("\n") == 1


def test_matplotlib_only_imported_for_plot():
    probe = (
        "import sys; from components.offline import nccl_report; "
        f"assert nccl_report.cli([{str(DATA / 'plain.log')!r}, '--json']) == 0; "
        "sys.exit('matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- the EFA line rate ------------------------------------------------------------------------


def test_line_rate_of_dev_stack(capsys):
    code, out, _ = run_cli(capsys, DATA / "plain.log", "--stack", "dev", "--fleet", "gpu")
    assert code == 0
    assert "EFA line rate of fleet gpu (stack dev, g6.8xlarge, 1 EFA device): 25 Gbit/s = 3.12 GB/s per node" in out
    # 2.90 GB/s x 8 = 23.2 Gbit/s of 25; the average 1.99993 GB/s is 16.0 Gbit/s.
    assert "plain: peak 2.90 GB/s at 1 GiB = 92.8% of line rate; average 2.00 GB/s = 64.0%" in out
    code, out, _ = run_cli(capsys, DATA / "plain.log", "--stack", "dev", "--fleet", "gpu", "--json")
    rate = json.loads(out)["line_rate"]
    assert (rate["instance_type"], rate["efa_devices"], rate["gbit_per_s"], rate["gbyte_per_s"]) == ("g6.8xlarge", 1, 25.0, 3.125)
    (plain,) = rate["runs"]
    assert plain["peak_fraction"] == pytest.approx(0.928) and plain["peak_size_bytes"] == 1 << 30


@pytest.mark.parametrize("argv, code, message", [
    (["--stack", "nope", "--fleet", "gpu"], 1, "error: no stack 'nope'; stacks: "),
    (["--stack", "dev", "--fleet", "cpu"], 1, "error: stack dev has no fleet 'cpu'; fleets: gpu\n"),
    (["--stack", "dev"], 2, "error: --stack and --fleet go together: the fleet's instance type sets the line rate\n"),
])
def test_bad_stack_or_fleet(capsys, argv, code, message):
    """A stack or fleet it cannot use is invalid input (1); options that do not go together, a usage error (2)."""
    got, out, err = run_cli(capsys, DATA / "plain.log", *argv)
    assert (got, out) == (code, "") and err.startswith(message) and err.count("\n") == 1
    if "no stack" in err:  # the valid names are listed, whichever stacks exist besides dev
        assert "dev" in err.removeprefix(message).rstrip().split(", ")


def test_stack_file_problems(tmp_path):
    fleet = "  efa-infra:fleets:\n    - {name: gpu, instanceType: g6.8xlarge, availabilityZone: us-east-1a, nodes: {desired: 2}%s}\n"
    (tmp_path / "Pulumi.tcp.yaml").write_text("config:\n  aws:region: us-east-1\n" + fleet % ", efa: false")
    (tmp_path / "Pulumi.bad.yaml").write_text("config:\n  aws:region: us-east-1\n" + fleet % ", nodes: {desired: -1}")
    with pytest.raises(nccl_tests.ReportError, match="fleet gpu of stack tcp has efa: false"):
        nccl_report.line_rate("tcp", "gpu", tmp_path)
    with pytest.raises(nccl_tests.ReportError, match=r"problem.* in .*Pulumi.bad.yaml"):  # config.ConfigError's own text
        nccl_report.line_rate("bad", "gpu", tmp_path)


def test_python_m_components_routes_here(efa_tcp):
    # The one end-to-end run: components/__main__.py hands nccl-report to nccl_report.cli.
    done = subprocess.run([sys.executable, "-m", "components", "nccl-report", *map(str, efa_tcp)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "18.73x" in done.stdout
    broken = subprocess.run([sys.executable, "-m", "components", "nccl-report", "tests/data/nccl/broken.log"],
                            cwd=REPO, capture_output=True, text=True)
    assert broken.returncode == 1  # a log it cannot use: invalid input, not a usage error
    assert broken.stderr == ("error: tests/data/nccl/broken.log: line 14: malformed data row: "
                             "6 columns where the header on line 8 has 13\n")


# --- the CLI's errors ---------------------------------------------------------------------------


def test_usage_errors_are_one_line(capsys, tmp_path):
    assert run_cli(capsys) == (2, "", "error: the following arguments are required: LOG\n")
    code, _, err = run_cli(capsys, tmp_path / "missing.log")
    assert (code, err) == (1, f"error: cannot read {tmp_path / 'missing.log'}: No such file or directory\n")

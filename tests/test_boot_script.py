"""The fleets' boot script, run for real as root in a private mount namespace:
the files it writes and the kernel setting it changes are stand-ins bound over
the real paths, so the machine running the tests is left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components import bootstrap

# awsome-distributed-training shows `hugepages-2Mi: 21122Mi` on a p4de node: what the AMI and the EFA installer reserve.
P4DE_PAGES = 21122 // 2


def run_boot(tmp_path: Path, reserved_pages: int, efa_devices: int = 1) -> tuple[int, Path, str]:
    """Run the boot script with `reserved_pages` already set; returns the pages after it, its sysctl.d and its log."""
    pages = tmp_path / "nr_hugepages"
    pages.write_text(f"{reserved_pages}\n")
    bound = {"/proc/sys/vm/nr_hugepages": pages}
    for real in ("/etc/security/limits.d", "/etc/systemd", "/etc/sysctl.d", "/var/log"):
        bound[real] = tmp_path / real.strip("/").replace("/", "_")
        bound[real].mkdir()
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("systemctl", "logger"):  # never re-exec the real systemd or write to the real journal
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    script = tmp_path / "boot.sh"
    script.write_text(bootstrap.boot_script(bootstrap.Node("gpu", efa_devices, boot_check=False)))
    setup = " && ".join(f"mount --bind {src} {dst}" for dst, src in bound.items())
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"{setup} && PATH={stubs}:$PATH exec bash {script}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    log = (bound["/var/log"] / "efa-infra-boot.log").read_text()
    return int(pages.read_text()), bound["/etc/sysctl.d"], log


def test_boot_script_raises_hugepages_to_what_jobs_need(tmp_path):
    after, sysctl_d, _ = run_boot(tmp_path, reserved_pages=0)
    assert after == bootstrap.HUGEPAGES_MIB // 2
    assert (sysctl_d / "90-efa-infra.conf").read_text() == f"vm.nr_hugepages = {bootstrap.HUGEPAGES_MIB // 2}\n"


def test_boot_script_never_lowers_what_the_ami_reserved(tmp_path):
    after, sysctl_d, log = run_boot(tmp_path, reserved_pages=P4DE_PAGES)
    assert after == P4DE_PAGES
    assert not (sysctl_d / "90-efa-infra.conf").exists()  # nothing that would lower it on the next boot either
    assert f"hugepages: {P4DE_PAGES} reserved, {bootstrap.HUGEPAGES_MIB // 2} needed: left as they are" in log


@pytest.mark.parametrize("reserved", [0, 3000])
def test_nodes_without_efa_reserve_no_hugepages(tmp_path, reserved):
    after, sysctl_d, _ = run_boot(tmp_path, reserved_pages=reserved, efa_devices=0)
    assert after == reserved and not (sysctl_d / "90-efa-infra.conf").exists()

"""Debian 12's stock kernel boots as a PV guest to its busybox shell on hvc0, and the shell works.

It needs the image (`pvhyp image debian`, built from Debian's packages on
first use unless $PVHYP_DEBIAN_DIR or the cache has one; skipped with the
reason where that cannot be done) and takes about two minutes: part of the
default suite, being the project's first promise. On failure the message
carries pvhyp.diagnose's report: the guest's oops, its last console lines,
the vCPU's RIP, function and instruction, the last hypercalls.
"""
from __future__ import annotations

import os

import pytest

BOOT_TIMEOUT = float(os.environ.get("PVHYP_DEBIAN_BOOT_TIMEOUT", "1200"))



@pytest.fixture(scope="module")
def guest():
    from dom0.images import debian
    from pvhyp.cli.bench_boot import MARKER, PvhypBoot
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    boot = PvhypBoot(image, memory=256)
    try:
        boot.start()
        assert boot.wait_for(MARKER, BOOT_TIMEOUT), "no marker line:\n" + boot.diagnosis()
        assert boot.wait_for(b"# ", 120), "no shell prompt:\n" + boot.diagnosis()
        yield boot
    finally:
        boot.close()


def run(guest, line: str, timeout: float = 300.0) -> str:
    try:
        return guest.command(line, timeout)
    except TimeoutError as e:
        pytest.fail(f"{e}\n{guest.diagnosis()}")


def test_marker_names_the_kernel_and_xen(guest):
    text = guest.output().decode(errors="replace")
    line = next(l for l in text.splitlines() if "PVHYP-GUEST-UP" in l)
    assert "kernel=6.1." in line and "hypervisor=xen" in line, line


def test_sys_hypervisor_type_is_xen(guest):
    assert run(guest, "cat /sys/hypervisor/type").strip() == "xen"


def test_cpuinfo_ls_and_dmesg(guest):
    assert "processor" in run(guest, "cat /proc/cpuinfo")
    listing = run(guest, "ls /").split()
    for entry in ("bin", "proc", "sys", "dev", "tmp", "init"):
        assert entry in listing, listing
    assert "Booting kernel on Xen" in run(guest, "dmesg")


def test_fork_loop(guest):
    out = run(guest, "for i in $(seq 200); do sh -c true; done; echo forks-done")
    assert "forks-done" in out


def test_dd_64_mib(guest):
    out = run(guest, "dd if=/dev/zero of=/tmp/x bs=1M count=64 2>&1; ls -l /tmp/x")
    assert "67108864" in out, out


def test_the_kernels_own_disk_and_network_modules_load(guest):
    """What a disk or a network device brings (init loads them by modalias; here by hand,
    the guest having neither), Debian's own signed modules accepted by Debian's kernel."""
    out = run(guest, "/sbin/load-modalias xen:vbd; /sbin/load-modalias xen:vif; cat /proc/modules")
    loaded = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"xen_blkfront", "ext4", "jbd2", "mbcache", "crc16", "crc32c_generic", "xen_netfront"} <= loaded, out
    assert "ext4" in run(guest, "cat /proc/filesystems")


def test_poweroff_ends_the_domain(guest):
    guest.send("poweroff -f")
    reason = guest.wait_shutdown(300)
    assert reason == "poweroff", f"{reason}\n{guest.diagnosis()}"

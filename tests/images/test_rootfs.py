"""The Debian disk recipe: its inputs, its scripts, and (slow) what the built disk holds."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from dom0.images import rootfs


@pytest.mark.parametrize("packages", [["openssh-server", "nginx-light", "g++"], []])
def test_debian_package_names_pass(packages):
    assert rootfs.validate_packages(packages + packages) == sorted(set(packages))


@pytest.mark.parametrize("bad", ["a;rm -rf /", "--option", "Upper", "x", "a b", "../x", ""])
def test_anything_else_never_reaches_mmdebstrap(bad):
    with pytest.raises(rootfs.ImageError, match="--packages"):
        rootfs.validate_packages([bad])


@pytest.mark.parametrize("size,size_bytes", [("2G", 2 << 30), ("1536M", 1536 << 20), ("1T", 1 << 40)])
def test_sizes(size, size_bytes):
    assert rootfs.validate_size(size) == size and rootfs.size_bytes(size) == size_bytes


@pytest.mark.parametrize("bad", ["", "2GB", "-1G", "0G", "1.5G", "2 G", "G"])
def test_bad_sizes_are_one_line_errors(bad):
    with pytest.raises(rootfs.ImageError, match="--size"):
        rootfs.validate_size(bad)


def test_too_small_a_disk_is_refused_before_anything_is_fetched(tmp_path):
    with pytest.raises(rootfs.ImageError, match="too small"):
        rootfs.build(tmp_path / "never", size="100M")
    assert not (tmp_path / "never").exists()


def test_the_root_is_xvda_as_xen_users_write_it():
    assert "/dev/xvda / ext4" in rootfs.FSTAB
    assert rootfs.CMDLINE == "console=hvc0 root=/dev/xvda ro"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_the_identity_script_is_valid_shell_and_reads_vm_data():
    subprocess.run(["sh", "-n"], input=rootfs.IDENTITY_SCRIPT, text=True, check=True)
    assert "xenstore-read vm-data/hostname" in rootfs.IDENTITY_SCRIPT
    assert "pvhyp.hostname=" in rootfs.IDENTITY_SCRIPT and "/sys/hypervisor/uuid" in rootfs.IDENTITY_SCRIPT
    assert "ExecStart=/usr/local/sbin/pvhyp-identity" in rootfs.IDENTITY_UNIT


def debugfs(image: str, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, image], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("debugfs") is None, reason="e2fsprogs is not installed")
def test_the_built_disk_is_a_xen_guests_root():
    from tests.rootfs.guest_kit import template_image
    image = template_image()
    disk = image["image"]
    assert subprocess.run(["e2fsck", "-fn", disk], capture_output=True).returncode == 0
    assert debugfs(disk, "cat /etc/fstab").count("/dev/xvda") == 1
    assert debugfs(disk, "cat /etc/machine-id") == ""
    assert "root:$" in debugfs(disk, "cat /etc/shadow")
    wants = debugfs(disk, "ls /etc/systemd/system/getty.target.wants")
    assert "console-getty.service" in wants and "getty@tty1" not in wants
    assert "pvhyp-identity.service" in debugfs(disk, "ls /etc/systemd/system/sysinit.target.wants")
    assert "systemd-getty-generator" in debugfs(disk, "ls /etc/systemd/system-generators")
    deps = debugfs(disk, f"cat /lib/modules/{image['release']}/modules.dep")
    assert "kernel/drivers/block/xen-blkfront.ko:" in deps and "kernel/drivers/net/xen-netfront.ko:" in deps

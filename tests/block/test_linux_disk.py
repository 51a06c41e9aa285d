"""Linux's own xen-blkfront on Debian's kernel against dom0's block backend.

A raw disk made on the host with `mke2fs -t ext4`: the guest mounts
/dev/xvda, writes, syncs; the host then finds the files in the image and
`e2fsck -fn` clean.  The integrity test runs a write+sync loop, SIGKILLs the
whole `pvhyp up` process tree in the middle, and checks that every file the
guest reported synced (its `sync` returned, so the flush completed) is in
the image with its contents, and that the file system is clean once its
journal is replayed (what the next mount does).

Slow: each test boots Debian on the software CPU.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.debian.test_toolstack import BOOT_TIMEOUT, type_line
from tests.toolstack.conftest import start_host

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mke2fs") is None or shutil.which("debugfs") is None,
                                 reason="e2fsprogs is not installed")]
PROMPT = "pvhyp-guest# "


@pytest.fixture(scope="module")
def linux_host(tmp_path_factory):
    from dom0.images import debian
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    host = start_host(str(tmp_path_factory.mktemp("linux-disk")), memory_mb=512)
    host.image = image
    host.ramdisk = image["ramdisk"]     # its initramfs loads xen-blkfront and ext4 (coldplug)
    yield host
    host.pvhyp("down", check=False)


def ext4_image(host, name: str, size: str = "128M") -> str:
    path = os.path.join(host.run_dir, name)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", path, size], check=True)
    return path


def boot(host, name: str, disks: list[str]) -> None:
    config = host.config(name, host.image["kernel"], ramdisk=host.ramdisk, memory=256,
                         extra="console=hvc0", disk=disks, on_poweroff="destroy")
    host.pvhyp("create", config)
    host.wait_for(lambda: PROMPT in host.console_log(name), BOOT_TIMEOUT, f"{name}'s shell")


def run(host, name: str, command: str, marker: str, timeout: float = 600) -> str:
    """Type `command; echo MARKER` and wait for MARKER at a line start; the console text since."""
    start = len(host.console_log(name))
    type_line(host, name, f"{command}; echo {marker}-$?")
    pattern = re.compile(rf"^{marker}-(\d+)", re.M)
    found = host.wait_for(lambda: pattern.search(host.console_log(name)[start:]), timeout, marker)
    out = host.console_log(name)[start:]
    assert found.group(1) == "0", out[-2000:]
    return out


def debugfs_cat(image: str, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", image], capture_output=True, check=True).stdout


def test_ext4_on_xvda_write_sync_and_the_host_sees_it(linux_host):
    host = linux_host
    disk = ext4_image(host, "root.ext4")
    scratch = os.path.join(host.run_dir, "scratch.raw")
    with open(scratch, "wb") as f:
        f.truncate(256 << 20)
    boot(host, "lin", [f"{disk},raw,xvda,w", f"format=raw, vdev=xvdb, access=rw, target={scratch}"])
    assert "xvda" in run(host, "lin", "cat /proc/partitions", "PARTS")
    out = run(host, "lin", "mkdir -p /mnt && mount -t ext4 /dev/xvda /mnt && echo pvhyp-was-here > /mnt/hello && "
                           "dd if=/dev/urandom of=/mnt/blob bs=64k count=128 && sync && "
                           "sha256sum /mnt/blob && umount /mnt", "WROTE")
    sha = re.search(r"^([0-9a-f]{64})  /mnt/blob", out, re.M).group(1)
    # backend throughput as the guest sees it (direct I/O, no guest page cache)
    speed = run(host, "lin", "time dd if=/dev/zero of=/dev/xvdb bs=1M count=64 oflag=direct && "
                             "time dd if=/dev/xvdb of=/dev/null bs=1M count=64 iflag=direct", "DD", timeout=900)
    write_s, read_s = (int(m) * 60 + float(sec) for m, sec in re.findall(r"^real\s+(\d+)m ?([\d.]+)s", speed, re.M)[:2])
    print(f"\nguest dd, 64 MiB direct I/O through blkback: write {64 / write_s:.1f} MiB/s, "
          f"read {64 / read_s:.1f} MiB/s")
    type_line(host, "lin", "poweroff -f")
    host.wait_for(lambda: "lin" not in host.pvhyp("list").stdout, 300, "the domain to go")
    assert debugfs_cat(disk, "/hello") == b"pvhyp-was-here\n"
    blob = subprocess.run(["debugfs", "-R", "dump /blob /dev/stdout", disk], capture_output=True,
                          check=True).stdout
    import hashlib
    assert hashlib.sha256(blob).hexdigest() == sha
    fsck = subprocess.run(["e2fsck", "-fn", disk], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def _tree(pids: list[int]) -> list[int]:
    """`pids` and all their descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo += children.get(pid, [])
    return out


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_sigkill_mid_workload_keeps_every_synced_write(tmp_path_factory, fmt):
    """raw: the backend's own pwrite/fsync; qcow2: qemu-nbd (SIGKILLed too) and NBD FLUSH."""
    if fmt == "qcow2" and shutil.which("qemu-img") is None:
        pytest.skip("qemu-utils is not installed")
    from dom0.images import debian
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    host = start_host(str(tmp_path_factory.mktemp("sigkill")), memory_mb=512)
    try:
        host.image, host.ramdisk = image, image["ramdisk"]
        disk = ext4_image(host, "work.ext4")
        if fmt == "qcow2":
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, disk + ".qcow2"], check=True)
            disk += ".qcow2"
        boot(host, "victim", [f"format={fmt}, vdev=xvda, access=rw, target={disk}"])
        type_line(host, "victim", "mkdir -p /mnt && mount -t ext4 /dev/xvda /mnt && i=0 && while true; do i=$((i+1)); "
                                  "dd if=/dev/urandom of=/mnt/f$i bs=4k count=64 2>/dev/null; "
                                  "s=$(sha256sum /mnt/f$i); sync; echo \"SYNCED $s\"; done")
        synced = re.compile(r"^SYNCED ([0-9a-f]{64})  /mnt/(f\d+)", re.M)
        host.wait_for(lambda: len(synced.findall(host.console_log("victim"))) >= 6, 900, "six synced files")
        state = host.state()
        victims = _tree([state["pid"]] + ([state["dom0_pid"]] if state.get("dom0_pid") else []))
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        acknowledged = synced.findall(host.console_log("victim"))
    finally:
        host.pvhyp("down", check=False)
    replayed = disk + ".replayed"
    if fmt == "qcow2":
        check = subprocess.run(["qemu-img", "check", disk], capture_output=True, text=True)
        assert check.returncode in (0, 3), check.stdout + check.stderr      # 3: leaked clusters only
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, replayed], check=True)
    else:
        shutil.copyfile(disk, replayed)
    # the journal replay the next mount would do, then a read-only check of the result
    subprocess.run(["e2fsck", "-E", "journal_only", "-y", replayed], capture_output=True)
    fsck = subprocess.run(["e2fsck", "-fn", replayed], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    import hashlib
    for sha, name in acknowledged:
        data = subprocess.run(["debugfs", "-R", f"dump /{name} /dev/stdout", replayed], capture_output=True,
                              check=True).stdout
        assert hashlib.sha256(data).hexdigest() == sha, f"{name}: synced, yet not in the image"
    print(f"\n{fmt}: {len(acknowledged)} synced files survived SIGKILL of {len(victims)} processes")

"""Debian 12 from its disk under pvhyp: login, files that survive a reboot, clones side by side.

Slow: systemd on the software CPU takes minutes per boot (the times are
printed, `pytest -s`). Everything runs on copy-on-write clones of the
template (`pvhyp clone`), whose image must come out byte-identical.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time

import pytest

from dom0.images import clone, rootfs
from tests.rootfs.guest_kit import Console, template_config, template_image
from tests.toolstack.conftest import start_host

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    image = template_image()
    work = str(tmp_path_factory.mktemp("debian-disk"))
    template = template_config(image, work)
    before = file_sha256(image["image"])
    host = start_host(work, memory_mb=1536)          # room for two 384 MiB guests and a spare
    host.image, host.template, host.work = image, template, work
    yield host
    host.pvhyp("down", check=False)
    assert file_sha256(image["image"]) == before, "a clone wrote the template's image"


def boot_clone(host, name: str) -> tuple[Console, str]:
    made = clone.clone(host.template, name, out=os.path.join(host.work, f"{name}.cfg"))
    host.pvhyp("create", made["config"])
    return Console(host, name), made["disks"][0]


def sha256_of_big(output: str) -> str:
    """sha256sum's line for /root/big (kernel messages may share the console)."""
    found = re.search(r"^([0-9a-f]{64})  /root/big", output, re.M)
    assert found, output
    return found.group(1)


@pytest.fixture
def destroy_after(rig):
    """Names of the guests a test starts; whatever is left of them is destroyed after it."""
    names: list[str] = []
    yield names
    running = rig.pvhyp("list").stdout
    for name in names:
        if name in running:
            rig.pvhyp("destroy", name, check=False)


def test_boot_login_64_mib_survive_a_reboot_then_poweroff(rig, destroy_after):
    started = time.monotonic()
    destroy_after.append("batagor")
    guest, disk = boot_clone(rig, "batagor")
    guest.login(rootfs.ROOT_PASSWORD)
    print(f"\nbatagor: login prompt and root shell after {time.monotonic() - started:.0f} s")
    assert guest.run("systemctl is-active multi-user.target").split()[-1] == "active"
    assert "systemd" in guest.run("apt list --installed 2>/dev/null | grep -c installed; ps -p 1 -o comm=")
    digest = sha256_of_big(guest.run("dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null; sync; "
                                     "sha256sum /root/big"))
    mark = len(guest.text())
    guest.type("reboot")
    guest.login(rootfs.ROOT_PASSWORD, after=mark)
    print(f"batagor: rebooted, logged in again at {time.monotonic() - started:.0f} s")
    assert sha256_of_big(guest.run("sha256sum /root/big")) == digest
    guest.type("poweroff")
    rig.wait_for(lambda: "batagor" not in rig.pvhyp("list").stdout, 600, "batagor to power off")
    print(f"batagor: powered off at {time.monotonic() - started:.0f} s")
    raw = os.path.join(rig.work, "batagor-check.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", disk, raw], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", raw], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    os.unlink(raw)


def test_two_clones_side_by_side_have_their_own_names(rig, destroy_after):
    started = time.monotonic()
    destroy_after += ["mieayam", "ketoprak"]
    guests = {name: boot_clone(rig, name)[0] for name in ("mieayam", "ketoprak")}
    ids = {}
    for name, guest in guests.items():
        guest.wait(rf"^{name} login: ")
        guest.login(rootfs.ROOT_PASSWORD)
        assert guest.run("hostname").split()[-1] == name
        ids[name] = guest.run("cat /etc/machine-id").split()[-1]
    print(f"\ntwo clones logged in after {time.monotonic() - started:.0f} s: {ids}")
    assert len(set(ids.values())) == 2 and all(len(i) == 32 for i in ids.values())

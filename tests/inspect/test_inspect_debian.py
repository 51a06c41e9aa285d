"""Every `pvhyp inspect` view of a running Debian guest (examples/debian.cfg, Debian's own
kernel with a disk attached), as a student would look at it once the shell is up.

Slow: a Debian boot on the software CPU (the busybox initramfs reaches its shell in
about ten seconds on an idle machine, a minute or more on a busy one).
"""
from __future__ import annotations

import json
import os

import pytest

from tests.toolstack.conftest import ROOT, start_host

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = float(os.environ.get("PVHYP_DEBIAN_BOOT_TIMEOUT", "1200"))
CONFIG = os.path.join(ROOT, "examples", "debian.cfg")


@pytest.fixture(scope="module")
def debian(tmp_path_factory):
    from dom0.images import debian as images
    try:
        image = images.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except images.ImageError as e:
        pytest.skip(str(e))
    host = start_host(str(tmp_path_factory.mktemp("inspect-debian")), memory_mb=512)
    try:
        disk = os.path.join(host.run_dir, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        host.pvhyp("create", CONFIG, f'kernel="{image["kernel"]}"', f'ramdisk="{image["ramdisk"]}"',
                   f'disk=["{disk},raw,xvda,w"]')
        host.wait_for(lambda: "pvhyp-guest# " in host.console_log("debian"), BOOT_TIMEOUT, "the shell")
        host.image = image
        yield host
    finally:
        host.pvhyp("down", check=False)


def view(host, *args: str) -> dict:
    return json.loads(host.pvhyp("inspect", "debian", *args, "--json").stdout)["data"]


def kernel_text_va(image) -> int:
    with open(image["system_map"]) as f:
        for line in f:
            address, _, name = line.split()
            if name == "_text":
                return int(address, 16)
    pytest.skip("no _text in the System.map")


def test_every_view_of_a_running_debian_guest(debian):
    host = debian
    va = kernel_text_va(host.image)
    walk = view(host, "--pagetables", hex(va))
    assert walk["cr3_frame"]["type"] == "L4" and walk["cr3_frame"]["pinned"]
    assert walk["maps"] is not None and walk["stops"] is None, walk
    assert "P" in walk["levels"][-1]["flags"] and "RW" not in walk["levels"][-1]["flags"]  # kernel text

    counts = view(host, "--frames")["counts"]
    assert counts["L4 pinned"] >= 1 and sum(n for name, n in counts.items() if name.startswith("L1")) > 10

    ports = view(host, "--evtchn")["ports"]
    assert any(p.get("virq") == "VIRQ_TIMER" for p in ports)
    assert sum(1 for p in ports if p.get("peer", {}).get("domid") == 0) >= 3   # xenstore, console, vbd

    grants = view(host, "--grants")
    assert any(e["mapped_by"] == 0 for e in grants["entries"])          # blkfront's ring, at least

    def quiet_ring():
        devices = {d["kind"]: d for d in view(host, "--rings")["devices"]}
        ring = devices["vbd"]["rings"]["blkif"]
        return ring if ring["req_prod"] > 0 and ring["outstanding"] == 0 else None
    ring = host.wait_for(quiet_ring, 60, "the disk ring to go quiet")
    assert ring["req_cons"] == ring["rsp_prod"] == ring["req_prod"]

    domid = int(host.pvhyp("domid", "debian").stdout)
    tree = view(host, "--xenstore", f"/local/domain/{domid}/device/vbd/51712")
    nodes = {n["path"].rsplit("/", 1)[-1]: n for n in tree["nodes"]}
    assert nodes["state"]["value"] == "4"       # XenbusStateConnected
    assert any(w["domid"] == domid and w["via"] == "ring" for w in tree["watches"])
    for option in ("--frames", "--evtchn", "--grants", "--rings", "--xenstore"):
        assert host.pvhyp("inspect", "debian", option).stdout.startswith("debian (d")

"""Xen's classic model with root: a vif (script=vif-bridge, bridge=br0) on a TAP device enslaved to a
Linux bridge, inside a network namespace this test creates (never the host's).

`pvhyp up` runs under `ip netns exec`, so the hypervisor and dom0 (and the TAP devices dom0 makes)
live in the namespace; the other commands reach them through the run directory's Unix sockets.
The guest is a Python guest (pvguest/examples/tapcheck.py) whose frames meet the namespace's
real Linux kernel: it ARPs for the bridge's address and pings it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from dom0.net import tap
from tests.net.test_dom0_net import report
from tests.toolstack.conftest import Host

BRIDGE_IP = "10.99.0.1"
GUEST_IP = "10.99.0.2"


def _why_not() -> str | None:
    if os.geteuid() != 0 or not tap.has_net_admin():
        return "needs root (CAP_NET_ADMIN) to make a network namespace and TAP devices"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no 'ip' (iproute2)"
    return None


needs_root = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def ns_run(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    return out


@pytest.fixture(scope="module")
def netns():
    if _why_not() is not None:
        pytest.skip(_why_not())
    name = f"pvhyp-tap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        ns_run(name, "ip", "link", "set", "lo", "up")
        ns_run(name, "ip", "link", "add", "br0", "type", "bridge")
        ns_run(name, "ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0")
        ns_run(name, "ip", "link", "set", "br0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)


@pytest.fixture(scope="module")
def host(tmp_path_factory, netns):
    h = Host(str(tmp_path_factory.mktemp("tap-up")))
    up = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                         "import sys; from pvhyp.cli import main; sys.exit(main())", "up", "--memory", "192"],
                        env=h.env, cwd=h.root, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    yield h
    h.pvhyp("down", check=False)


def links(ns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(ns_run(ns, "ip", "-j", "link", "show").stdout)}


class _Port:
    name = "vif7.0"

    def __init__(self):
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_tap_link_reads_a_budget_per_wakeup_and_drops_before_connect():
    """The loop side of TapLink on a SOCK_SEQPACKET pair (one frame per read, as a TAP's fd)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    readers: dict = {}
    link = tap.TapLink("vif7.0", "br0", os.dup(ours.fileno()), readers.__setitem__,
                       lambda fd: readers.pop(fd, None))
    ours.close()
    os.set_blocking(link.fd, False)
    for i in range(tap.READ_BUDGET + 6):
        theirs.send(bytes([i]) * 60)
    link._on_readable()                                 # no frontend yet: read, dropped, counted
    assert link.counters["from_host_dropped"] == tap.READ_BUDGET
    port, flushed = _Port(), []
    link.attach(port)
    link.on_frames = lambda: flushed.append(True)
    link._on_readable()
    assert [f[0] for f in port.frames] == list(range(tap.READ_BUDGET, tap.READ_BUDGET + 6)) and flushed
    link.input(port.name, b"x" * 60)
    assert theirs.recv(100) == b"x" * 60 and link.counters["to_host_frames"] == 1
    link.close()
    assert not readers
    link.input(port.name, b"y" * 60)
    assert link.counters["to_host_dropped"] == 1
    theirs.close()


def test_linux_tun_constants_match_the_installed_header(tmp_path):
    if shutil.which("gcc") is None or not os.path.exists("/usr/include/linux/if_tun.h"):
        pytest.skip("no gcc or no linux-libc-dev headers")
    src = tmp_path / "tun.c"
    src.write_text("#include <stdio.h>\n#include <sys/ioctl.h>\n#include <linux/if_tun.h>\n#include <linux/capability.h>\n"
                   "int main(void){printf(\"%lu %d %d %d\\n\",(unsigned long)TUNSETIFF,IFF_TAP,IFF_NO_PI,"
                   "CAP_NET_ADMIN);return 0;}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "tun"), str(src)], check=True, timeout=60)
    values = subprocess.run([str(tmp_path / "tun")], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in values] == [tap.TUNSETIFF, tap.IFF_TAP, tap.IFF_NO_PI, tap.CAP_NET_ADMIN]


def test_a_guest_on_a_linux_bridge_reaches_the_namespace_kernel(host, netns):
    config = host.config("tapper", "python:pvguest.examples.tapcheck:arp_ping", memory=8,
                         vif=["script=vif-bridge, bridge=br0, mac=00:16:3e:00:7a:01"],
                         extra=f"guest_ip={GUEST_IP} peer_ip={BRIDGE_IP} linger=60")
    host.pvhyp("create", config)
    domid = int(host.pvhyp("domid", "tapper").stdout)
    ifname = f"vif{domid}.0"
    r = report(host, "tapper")
    br0_mac = links(netns)["br0"]["address"]
    assert r["arp_reply_from"] == br0_mac           # the namespace's kernel answered the guest's ARP
    assert r["echo_replies"] == [1, 2, 3]           # and its pings
    vif = links(netns)[ifname]
    assert vif["master"] == "br0" and vif["address"] == tap.BACKEND_MAC and "UP" in vif["flags"]
    neigh = ns_run(netns, "ip", "neigh", "show", GUEST_IP, "dev", "br0").stdout
    assert "00:16:3e:00:7a:01" in neigh             # the guest's frames reached the kernel
    listing = host.pvhyp("network-list", "tapper").stdout
    assert "br0" in listing
    host.pvhyp("destroy", "tapper")
    host.wait_for(lambda: ifname not in links(netns), 30, f"{ifname} removed")


@pytest.mark.parametrize("bridge, why", [("nosuch0", "no such Linux bridge"),
                                         ("lo", "is not a Linux bridge")])
def test_a_name_that_is_not_a_linux_bridge_is_refused_in_one_line(host, netns, bridge, why):
    config = host.config(f"nobr-{bridge}", "python:pvguest.examples.tapcheck:arp_ping", memory=8,
                         vif=[f"script=vif-bridge, bridge={bridge}"])
    out = host.pvhyp("create", config, check=False)
    assert out.returncode != 0
    assert re.search(why, out.stderr) and out.stderr.count("\n") == 1, out.stdout + out.stderr
    host.pvhyp("destroy", f"nobr-{bridge}", check=False)
    assert not [n for n in links(netns) if n.startswith("vif")]


def test_forward_with_vif_bridge_is_a_config_error(host):
    config = host.config("tapfwd", "python:pvguest.examples.tapcheck:arp_ping", memory=8,
                         vif=["script=vif-bridge, bridge=br0, forward=tcp:127.0.0.1:8080:80"])
    out = host.pvhyp("create", config, check=False)
    assert out.returncode == 2 and "not with script=vif-bridge" in out.stderr, out.stdout + out.stderr


def test_network_attach_and_detach_make_and_remove_the_tap(host, netns):
    host.pvhyp("create", host.config("taphp", "python:pvguest.examples.netcheck:hotplug", memory=8))
    domid = int(host.pvhyp("domid", "taphp").stdout)
    ifname = f"vif{domid}.0"
    host.pvhyp("network-attach", "taphp", "script=vif-bridge", "bridge=br0", "mac=00:16:3e:00:7a:02")
    host.wait_for(lambda: "Connected" in host.pvhyp("network-list", "taphp").stdout, 20, "the vif to connect")
    assert links(netns)[ifname]["master"] == "br0"
    host.pvhyp("network-detach", "taphp", "00:16:3e:00:7a:02")
    host.wait_for(lambda: ifname not in links(netns), 20, f"{ifname} removed at detach")
    bad = host.pvhyp("network-attach", "taphp", "script=vif-bridge", "bridge=nosuch0", check=False)
    assert bad.returncode != 0 and "no such Linux bridge" in bad.stdout + bad.stderr
    host.pvhyp("destroy", "taphp")


@needs_root
def test_without_cap_net_admin_the_tap_is_refused_in_one_line():
    """dom0 run by root but without CAP_NET_ADMIN (setpriv drops it) says what is missing."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv (util-linux)")
    code = ("from dom0.net.tap import TapLink, TapError\n"
            "try:\n    TapLink.open('vif9.0', 'br0', None, None)\nexcept TapError as e:\n    print(e)\n")
    out = subprocess.run(["setpriv", "--bounding-set", "-net_admin", sys.executable, "-P", "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.count("\n") == 1 and "needs root (CAP_NET_ADMIN)" in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
def test_a_debian_guest_on_the_linux_bridge_pings_its_address(netns, tmp_path):
    """Linux's own xen-netfront on br0: the guest pings the bridge's address (the namespace's kernel answers)."""
    from dom0.images import debian
    from pvguest.spawn import python_command, python_env
    from pvhyp.cli.bench_net import UpHost, has_netfront, ping_ms, wait_for_shell
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    if not has_netfront(image):
        pytest.skip("the Debian image has no xen-netfront module")
    host = UpHost(str(tmp_path), memory_mb=512)
    up = subprocess.run(["ip", "netns", "exec", netns, *python_command(
        ["-c", "import sys; from pvhyp.cli import main; sys.exit(main())", "up", "--run-dir", host.run_dir,
         "--memory", "512"])], env=python_env(), capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        guest = host.create_debian("tapdeb", image, ["script=vif-bridge, bridge=br0, mac=00:16:3e:00:7a:03"])
        wait_for_shell(guest)
        guest.command(f"ifconfig eth0 {GUEST_IP} netmask 255.255.255.0 up", 60)
        assert ping_ms(guest, BRIDGE_IP, count=3) > 0
        neigh = ns_run(netns, "ip", "neigh", "show", GUEST_IP, "dev", "br0").stdout
        assert "00:16:3e:00:7a:03" in neigh         # the namespace's kernel learnt the guest
    finally:
        host.down()

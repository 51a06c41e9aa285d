"""Linux's own xen-netfront on pvhyp: a Debian guest (busybox initramfs) takes eth0 by DHCP from
passt and serves a page the host fetches through a port forward; vifs come and go on the running
guest; two guests on one bridge ping each other and copy 100 MiB with equal sha256.

Slow (Debian boots on the software CPU). Only this machine is involved: the forward binds
127.0.0.1, passt hands out no DNS and dom0's uplink guard drops what the guest opens itself.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pvhyp.cli.bench_net import UpHost, dhcp, free_port, has_netfront, ping_ms, wait_for_shell, wait_listening

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image():
    from dom0.images import debian
    try:
        found = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    if not has_netfront(found):
        pytest.skip("the Debian image has no xen-netfront module")
    if shutil.which("passt") is None:
        pytest.skip("passt (Debian package) is not installed")
    return found


@pytest.fixture
def host(tmp_path):
    h = UpHost(str(tmp_path), memory_mb=1024)
    h.up()
    yield h
    h.down()


def test_dhcp_httpd_and_curl_through_the_forward_then_hot_plug(host, image):
    port = free_port()
    guest = host.create_debian("web", image, [f"bridge=xenbr0, forward=tcp:127.0.0.1:{port}:80"])
    wait_for_shell(guest)
    assert dhcp(guest) == "10.0.2.15"
    guest.command("mkdir -p /www && echo served-by-busybox-httpd-in-the-guest > /www/index.html && "
                  "httpd -p 80 -h /www", 60)
    wait_listening(guest, 80)
    page = subprocess.run(["curl", "-sS", "-m", "120", f"http://127.0.0.1:{port}/"], capture_output=True,
                          text=True, timeout=180)
    assert page.stdout.strip() == "served-by-busybox-httpd-in-the-guest", page.stderr
    # the guest reaches nothing by itself: a connection it opens is dropped in dom0 (and counted)
    guest.command("nc -w 3 10.0.2.2 22 < /dev/null; true", 60)
    (vif,) = host.call("network-list", dom="web")["vifs"]
    assert vif["uplink"]["dropped"] > 0 and vif["counters"]["rx_packets"] > 0
    # hot plug: a second vif appears as eth1 and goes again
    host.cli("network-attach", "web", "bridge=other", "mac=00:16:3e:00:cc:01")
    links = ""
    for _ in range(60):
        links = guest.command("ip link", 60)
        if "00:16:3e:00:cc:01" in links:
            break
    assert "00:16:3e:00:cc:01" in links
    host.cli("network-detach", "web", "1")
    for _ in range(60):
        links = guest.command("sleep 1; ip link", 60)
        if "00:16:3e:00:cc:01" not in links:
            break
    assert "00:16:3e:00:cc:01" not in links
    assert "Connected" in host.cli("network-list", "web").stdout


def test_two_guests_ping_and_copy_100_mib(host, image):
    a = host.create_debian("ga", image, ["bridge=lan"], memory=320)
    b = host.create_debian("gb", image, ["bridge=lan"], memory=320)
    for shell in (a, b):
        wait_for_shell(shell)
    a.command("ifconfig eth0 10.0.3.1 netmask 255.255.255.0 mtu 65520 up", 60)
    b.command("ifconfig eth0 10.0.3.2 netmask 255.255.255.0 mtu 65520 up", 60)
    assert ping_ms(a, "10.0.3.2", count=3) > 0
    assert ping_ms(b, "10.0.3.1", count=3) > 0
    a.command("dd if=/dev/urandom of=/tmp/seed bs=1M count=1 2>/dev/null; "
              "for i in $(seq 100); do cat /tmp/seed; done > /tmp/file; ls -l /tmp/file", 1200)
    sent = a.command("sha256sum /tmp/file", 1200).split()[0]
    b.command("(sleep 100000 | nc -l -p 7000 | sha256sum > /tmp/sum) &", 60)
    wait_listening(b, 7000)
    a.command("nc 10.0.3.2 7000 < /tmp/file", 7200)
    received = ""
    for _ in range(600):
        received = b.command("cat /tmp/sum", 60).strip()
        if re.match(r"[0-9a-f]{64}", received):
            break
        b.command("sleep 2", 60)
    assert received.split()[0] == sent

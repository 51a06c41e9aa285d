"""Debian under `pvhyp up`: `pvhyp create` boots it, `reboot -f` restarts it (on_reboot =
"restart"), `poweroff -f` ends it (on_poweroff = "destroy"), the toolstack's view follows.

Slow: two boots on the software CPU.
"""
from __future__ import annotations

import os

import pytest

from tests.toolstack.conftest import start_host

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = float(os.environ.get("PVHYP_DEBIAN_BOOT_TIMEOUT", "1200"))


@pytest.fixture(scope="module")
def debian_host(tmp_path_factory):
    from dom0.images import debian
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    host = start_host(str(tmp_path_factory.mktemp("debian-up")), memory_mb=512)
    host.image = image
    yield host
    host.pvhyp("down", check=False)


def type_line(host, name: str, line: str) -> None:
    from dom0.toolstack.api import call
    reply = call(os.path.join(host.run_dir, "pvhyp.sock"), "console", dom=name)
    fd = os.open(reply["tty"], os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, line.encode() + b"\r")
    finally:
        os.close(fd)


def test_reboot_restarts_and_poweroff_destroys(debian_host):
    host, image = debian_host, debian_host.image
    config = host.config("deb", image["kernel"], ramdisk=image["ramdisk"], memory=256,
                         extra="console=hvc0", on_reboot="restart", on_poweroff="destroy")
    host.pvhyp("create", config)
    first = host.pvhyp("domid", "deb").stdout.strip()
    host.wait_for(lambda: "pvhyp-guest# " in host.console_log("deb"), BOOT_TIMEOUT, "the first shell")
    type_line(host, "deb", "reboot -f")
    host.wait_for(lambda: host.console_log("deb").count("PVHYP-GUEST-UP") == 2, BOOT_TIMEOUT, "the restart")
    assert "deb shut down (reboot), action restart" in host.console_log("deb")
    assert host.pvhyp("domid", "deb").stdout.strip() != first
    host.wait_for(lambda: host.console_log("deb").count("pvhyp-guest# ") >= 2, 120, "the second shell")
    type_line(host, "deb", "poweroff -f")
    host.wait_for(lambda: "deb" not in host.pvhyp("list").stdout, 300, "the domain to go")
    assert "deb shut down (poweroff), action destroy" in host.console_log("deb")

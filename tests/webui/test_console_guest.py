"""The console bridge against a real guest: Debian's busybox shell on hvc0 under `pvhyp up`,
its console pty (from the toolstack's `console` command) behind a WebSocket. Keystrokes go
in as the browser sends them (masked text frames), the shell's answer comes out.

The browser test (test_browser.py) does the same through the XenAPI server and Chromium;
this one needs neither, so the bridge is covered wherever a Debian guest boots."""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from dom0.webui.app import WebApp
from tests.debian.test_toolstack import BOOT_TIMEOUT
from tests.toolstack.conftest import start_host
from tests.webui.test_app import Loop, upgrade_headers
from tests.webui.ws_kit import client_frame, server_frames

PROMPT = "pvhyp-guest# "
pytestmark = pytest.mark.slow       # a Debian boot; the browser test boots one in the default suite


class Session:
    def user_of(self, ref):
        return "root" if ref == "OpaqueRef:test" else None


class ToolstackConsoles:
    """console ref = the domain's name; its pty from dom0's toolstack, as xapi looks it up."""

    def __init__(self, host):
        self.host = host

    def pty_path(self, ref):
        from dom0.toolstack.api import call
        return call(os.path.join(self.host.run_dir, "pvhyp.sock"), "console", dom=ref)["tty"]


def test_echo_through_the_websocket(tmp_path):
    from dom0.images import debian
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    host = start_host(str(tmp_path / "up"), memory_mb=512)
    try:
        config = host.config("web", image["kernel"], ramdisk=image["ramdisk"], memory=256, extra="console=hvc0")
        host.pvhyp("create", config)
        host.wait_for(lambda: PROMPT in host.console_log("web"), BOOT_TIMEOUT, "the shell")
        loop = Loop()
        app = WebApp(loop.add_reader, loop.remove_reader, Session(), ToolstackConsoles(host))
        server, client = socket.socketpair()
        app.websocket("/console", {"ref": "web", "session_id": "OpaqueRef:test"}, upgrade_headers(),
                      server, b"")
        client.setblocking(False)
        data = b""

        def output() -> bytes:
            nonlocal data
            loop.turn()
            try:
                data += client.recv(65536)
            except BlockingIOError:
                pass
            head, _, frames = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            try:
                return b"".join(p for _, op, p in server_frames(frames) if op == 0x2)
            except (AssertionError, IndexError, struct.error):
                return b""      # a frame still coming

        for key in "echo $((6*7))\r":      # one keystroke a frame, as xterm.js sends them
            client.sendall(client_frame(0x1, key.encode()))
        deadline = time.monotonic() + 60
        while b"\r\n42\r\n" not in output():
            assert time.monotonic() < deadline, f"no 42 in {output()!r}"
        client.sendall(client_frame(0x8, struct.pack("!H", 1000)))
        while app.bridges:
            assert time.monotonic() < deadline
            loop.turn()
    finally:
        host.pvhyp("down", check=False)

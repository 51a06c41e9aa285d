"""The web app's trust boundary (the table at the top of dom0/webui/app.py) and the console
bridge, over real sockets and a real pty, on a selector loop like dom0's."""
from __future__ import annotations

import base64
import os
import socket
import struct
import termios
import time
import tty

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.webui import console_bridge
from dom0.webui.app import STATIC_FILES, WebApp
from tests.net.test_passt import Loop as NetLoop
from tests.webui.ws_kit import client_frame, close_code, server_frames

SESSION = "OpaqueRef:11111111-2222-3333-4444-555555555555"
CONSOLE = "OpaqueRef:aaaaaaaa-2222-3333-4444-555555555555"


class Loop(NetLoop):
    """dom0's loop in miniature (add_reader/remove_reader on a selector), turned a step at a time."""

    def turn(self, seconds=0.05):
        for key, _ in self.selector.select(seconds):
            key.data()


class Sessions:
    def __init__(self):
        self.live = {SESSION}

    def user_of(self, ref):
        return "root" if ref in self.live else None


class Consoles:
    """A console is a pty: this test holds the master, as dom0's console backend does."""

    def __init__(self):
        self.master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        self.path = os.ttyname(slave)
        self.slave = slave      # held open, as dom0 does, so the master never reports EIO early

    def pty_path(self, ref):
        return self.path if ref == CONSOLE else None

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def setup():
    loop, consoles = Loop(), Consoles()
    app = WebApp(loop.add_reader, loop.remove_reader, Sessions(), consoles)
    yield loop, consoles, app
    app.close()
    consoles.close()


def upgrade_headers(**change):
    key = base64.b64encode(os.urandom(16)).decode()
    h = {"Host": "127.0.0.1:8080", "Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", "Origin": "http://127.0.0.1:8080"}
    h.update(change)
    return {k: v for k, v in h.items() if v is not None}


def read_all(sock, seconds=2.0, until=None):
    sock.settimeout(seconds)
    data = b""
    try:
        while until is None or until not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


# -- static files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(STATIC_FILES))
def test_every_static_file_is_served_with_its_type(setup, path):
    _, _, app = setup
    status, headers, body = app.http("GET", path, {}, {})
    h = dict(headers)
    assert status == 200 and body and int(h["Content-Length"]) == len(body)
    assert h["Content-Type"] == STATIC_FILES[path][1]
    assert h["X-Content-Type-Options"] == "nosniff"
    assert app.http("GET", path, {}, {"If-None-Match": h["ETag"]})[0] == 304
    head = app.http("HEAD", path, {}, {})
    assert head[0] == 200 and head[2] == b"" and dict(head[1])["Content-Length"] == str(len(body))


@pytest.mark.parametrize("path", ["/../app.py", "/%2e%2e/app.py", "/static/app.js", "/vendor/",
                                  "/vendor/../app.py", "//etc/passwd", "/app.js/", "", "/index.html\0",
                                  "/vendor/VERSION", "/vendor/xterm-LICENSE", "/console"])
def test_anything_else_is_404(setup, path):
    _, _, app = setup
    assert app.http("GET", path, {}, {})[0] == 404


def test_other_methods_are_405(setup):
    _, _, app = setup
    status, headers, _ = app.http("DELETE", "/", {}, {})
    assert status == 405 and dict(headers)["Allow"] == "GET, HEAD"


# -- WebSocket refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("path, query, change, status", [
    ("/elsewhere", {"ref": CONSOLE, "session_id": SESSION}, {}, 404),
    ("/console", {"ref": CONSOLE, "session_id": "OpaqueRef:bad"}, {}, 403),
    ("/console", {"ref": CONSOLE}, {}, 403),
    ("/console", {"ref": "OpaqueRef:unknown", "session_id": SESSION}, {}, 404),
    ("/console", {"ref": CONSOLE, "session_id": SESSION}, {"Origin": "http://evil.example"}, 403),
    ("/console", {"ref": CONSOLE, "session_id": SESSION}, {"Sec-WebSocket-Version": "7"}, 426),
    ("/console", {"ref": CONSOLE, "session_id": SESSION}, {"Sec-WebSocket-Key": None}, 400),
])
def test_websocket_refusals_answer_http_and_close(setup, path, query, change, status):
    loop, _, app = setup
    server, client = socket.socketpair()
    with client:
        app.websocket(path, query, upgrade_headers(**change), server, b"")
        reply = read_all(client)
        assert reply.startswith(f"HTTP/1.1 {status} ".encode())
        assert server.fileno() == -1 and not app.bridges
        assert not loop.selector.get_map()


# -- the bridge --------------------------------------------------------------------------------

def open_console(setup, leftover=b""):
    loop, consoles, app = setup
    server, client = socket.socketpair()
    app.websocket("/console", {"ref": CONSOLE, "session_id": SESSION}, upgrade_headers(), server, leftover)
    head = read_all(client, until=b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " in head
    return client, head.split(b"\r\n\r\n", 1)[1]


def read_frames(loop, client, want):
    """Turn the loop until the client has ``want`` whole frames; return them."""
    data = b""
    client.setblocking(False)
    end = time.monotonic() + 5
    while True:
        loop.turn()
        try:
            data += client.recv(65536)
        except BlockingIOError:
            pass
        try:
            frames = server_frames(data)
            if len(frames) >= want:
                return frames
        except (AssertionError, IndexError, struct.error):
            pass
        assert time.monotonic() < end, f"timed out with {data!r}"


def test_keystrokes_in_output_out(setup):
    loop, consoles, app = setup
    client, rest = open_console(setup, leftover=client_frame(0x1, b"ec"))
    assert rest == b""
    client.sendall(client_frame(0x2, b"ho 42\r"))
    got = b""
    end = time.monotonic() + 5
    while got != b"echo 42\r":
        loop.turn()
        try:
            os.set_blocking(consoles.master, False)
            got += os.read(consoles.master, 100)
        except BlockingIOError:
            pass
        assert time.monotonic() < end
    os.write(consoles.master, "42 é\r\n".encode())
    frames = read_frames(loop, client, 1)
    assert b"".join(p for _, op, p in frames if op == 0x2) == "42 é\r\n".encode()
    client.sendall(client_frame(0x8, struct.pack("!H", 1000)))
    loop.run_until(lambda: not app.bridges)
    assert not loop.selector.get_map()


def test_the_pty_closing_closes_the_socket_with_a_reason(setup):
    loop, consoles, app = setup
    client, _ = open_console(setup)
    loop.turn()
    consoles.close()        # the domain is gone: dom0 closes both ends
    (frame,) = read_frames(loop, client, 1)
    assert frame[1] == 0x8 and close_code(frame[2]) == console_bridge.CLOSE_CONSOLE_GONE
    assert b"domain is gone" in frame[2]
    client.sendall(client_frame(0x8, struct.pack("!H", console_bridge.CLOSE_CONSOLE_GONE)))
    loop.run_until(lambda: not app.bridges)
    assert not loop.selector.get_map()


def test_a_broken_client_is_closed_with_1002(setup):
    loop, consoles, app = setup
    client, _ = open_console(setup)
    client.sendall(client_frame(0x1, b"x", masked=False))
    (frame,) = read_frames(loop, client, 1)
    assert close_code(frame[2]) == 1002
    loop.run_until(lambda: not app.bridges)
    assert read_all(client, 1) == b""       # the TCP connection ended


def test_the_browser_vanishing_frees_everything(setup):
    loop, consoles, app = setup
    client, _ = open_console(setup)
    client.close()
    loop.run_until(lambda: not app.bridges)
    assert not loop.selector.get_map()


def test_a_browser_that_never_reads_costs_a_bounded_buffer(setup, monkeypatch):
    monkeypatch.setattr(console_bridge, "MAX_PENDING_OUTPUT", 64 * 1024)
    loop, consoles, app = setup
    client, _ = open_console(setup)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    (bridge,) = app.bridges
    bridge.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    os.set_blocking(consoles.master, False)
    end = time.monotonic() + 10
    while not bridge.dropped_output:   # the guest prints on, nobody reads the socket
        try:
            os.write(consoles.master, b"y" * 4096)
        except BlockingIOError:
            pass
        loop.turn(0)
        assert len(bridge.to_socket) <= 64 * 1024 + console_bridge.READ_CHUNK
        assert time.monotonic() < end, "nothing was dropped"
    assert bridge.dropped_output > 0


def test_a_console_closes_once_its_session_is_logged_out(setup):
    loop, consoles, app = setup
    client, _ = open_console(setup)
    app.sessions.live.clear()
    client.sendall(client_frame(0x1, b"ls\r"))
    (frame,) = read_frames(loop, client, 1)
    assert frame[1] == 0x8 and close_code(frame[2]) == 1008
    os.set_blocking(consoles.master, False)
    with pytest.raises(BlockingIOError):
        os.read(consoles.master, 100)       # the keys never reached the guest


def test_a_console_over_tls(setup, tmp_path):
    """The API off loopback is TLS: the server hands over an SSLSocket, whose reads may want
    a write first and whose decrypted bytes the loop cannot see."""
    import shutil
    import ssl
    import subprocess
    import threading
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=pvhyp",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    plain_server, plain_client = socket.socketpair()
    client_box = []
    t = threading.Thread(target=lambda: client_box.append(client_ctx.wrap_socket(plain_client)))
    t.start()
    server = server_ctx.wrap_socket(plain_server, server_side=True)
    t.join()
    (client,) = client_box
    loop, consoles, app = setup
    app.websocket("/console", {"ref": CONSOLE, "session_id": SESSION}, upgrade_headers(), server, b"")
    head = read_all(client, until=b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    # many small frames in one TLS record: all of them must come through on the same turns
    client.sendall(b"".join(client_frame(0x1, bytes([c])) for c in b"echo tls\r"))
    got, end = b"", time.monotonic() + 5
    os.set_blocking(consoles.master, False)
    while got != b"echo tls\r":
        loop.turn()
        try:
            got += os.read(consoles.master, 100)
        except BlockingIOError:
            pass
        assert time.monotonic() < end, got
    todo = 100_000      # more than one TLS record back
    data, end = b"", time.monotonic() + 5
    client.setblocking(False)
    while True:
        try:
            todo -= os.write(consoles.master, b"x" * todo) if todo else 0
        except BlockingIOError:
            pass
        loop.turn()
        try:
            data += client.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        try:
            if sum(len(p) for _, _, p in server_frames(data)) == 100_000:
                break
        except (AssertionError, IndexError, struct.error):
            pass
        assert time.monotonic() < end, len(data)
    client.close()
    loop.run_until(lambda: not app.bridges)


def test_dropped_output_is_announced_once_the_browser_reads_again(setup, monkeypatch):
    monkeypatch.setattr(console_bridge, "MAX_PENDING_OUTPUT", 8 * 1024)
    loop, consoles, app = setup
    client, _ = open_console(setup)
    (bridge,) = app.bridges
    bridge.to_socket += b"\0" * 8 * 1024        # as if the socket had taken nothing for a while
    os.write(consoles.master, b"lost")
    loop.run_until(lambda: bridge.dropped_output == 4)
    del bridge.to_socket[:]
    os.write(consoles.master, b"seen")
    frames = read_frames(loop, client, 2)
    text = b"".join(p for _, op, p in frames if op == 0x2)
    assert text.startswith(b"\r\n[pvhyp: 4 bytes of output dropped") and text.endswith(b"seen")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200) | st.builds(client_frame, st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]),
                                                      st.binary(max_size=150), st.booleans()), max_size=10))
def test_hostile_browsers_never_break_the_loop(chunks):
    """Whatever a browser sends, the bridge's callbacks return (no exception reaches dom0's
    loop), keys only reach the pty as whole messages, and a closed bridge lets go of everything."""
    loop, consoles = Loop(), Consoles()
    app = WebApp(loop.add_reader, loop.remove_reader, Sessions(), consoles)
    try:
        client, _ = open_console((loop, consoles, app))
        for chunk in chunks:
            try:
                client.sendall(chunk)
            except OSError:
                break       # the bridge closed the connection
            loop.turn(0)
            loop.turn(0)
        client.close()
        loop.run_until(lambda: not app.bridges)
        assert not loop.selector.get_map()
    finally:
        app.close()
        consoles.close()


def test_tick_pushes_what_the_socket_could_not_take(setup):
    loop, consoles, app = setup
    client, _ = open_console(setup)
    (bridge,) = app.bridges
    bridge.to_socket += client_frame(0x2, b"late", masked=False)    # as if the socket had been full
    app.tick()          # no reader is ready: only the tick moves it
    frames = read_frames(loop, client, 1)
    assert frames == [(True, 0x2, b"late")]

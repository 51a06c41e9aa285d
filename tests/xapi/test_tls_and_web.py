"""The server on dom0's real loop class: TLS (self-signed, made on first use) and the web-app contract.

Here the loop runs in a thread of the test and the model stands on a toolstack with no
domains (test_table's); the SDK tests run the whole of `pvhyp up`.
"""
from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading

import pytest

from dom0.xapi.model import Api
from dom0.xapi.server import XapiServer
from dom0.xapi.session import Sessions
from dom0.xapi.store import VmStore
from dom0.xenstored import XenStore
from dom0.xenstored.unix_socket import SocketServer
from tests.xapi.test_table import NoDomains

XenAPI = pytest.importorskip("XenAPI")


class PageApp:
    """The contract dom0.webui's WebApp keeps (docs/xenapi.md), reduced to one page and an echo."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.sockets = []

    def http(self, method, path, query, headers):
        if path == "/":
            return 200, [("Content-Type", "text/html")], b"<h1>pvhyp</h1>"
        return 404, [], b"no\n"

    def websocket(self, path, query, headers, sock, leftover):
        self.sockets.append(sock)
        ok = self.sessions.user_of(query.get("session_id", "")) is not None
        sock.setblocking(True)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + leftover if ok else
                     b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        sock.close()


@pytest.fixture
def served(tmp_path):
    (tmp_path / "creds").write_text("root:pw\n")
    os.chmod(tmp_path / "creds", 0o600)
    loop = SocketServer(XenStore(), str(tmp_path / "xs"))
    sessions = Sessions(str(tmp_path / "creds"))
    server = None
    api = Api(NoDomains(), VmStore(str(tmp_path / "vms")), sessions, lambda: server.url)
    web = PageApp(sessions)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            loop.poll(0.02)
            server.tick()
    servers = []

    def make(tls):
        nonlocal server
        server = XapiServer(api, loop, ("127.0.0.1", 0), web=web, tls_dir=str(tmp_path), tls=tls)
        servers.append(server)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return server, web
    yield make
    stop.set()
    for s in servers:
        s.close()


def test_tls_with_a_self_signed_certificate(served, tmp_path):
    server, _ = served(tls=True)
    assert server.url.startswith("https://") and (tmp_path / "xapi-key.pem").stat().st_mode & 0o077 == 0
    session = XenAPI.Session(server.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", "pw", "1.0", "tls test")
    assert len(session.xenapi.VM.get_all()) == 1       # Domain-0
    session.xenapi.session.logout()
    with socket.create_connection((server.host, server.port), timeout=10) as plain:
        plain.sendall(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")   # not TLS: dropped, nothing served
        try:
            assert not plain.recv(100).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:
            pass
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLError):       # self-signed: a verifying client refuses it, as it should
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_web_app_gets_pages_and_websockets(served):
    server, web = served(tls=False)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/")
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (200, b"<h1>pvhyp</h1>")
    conn.request("HEAD", "/")
    reply = conn.getresponse()
    assert reply.status == 200 and reply.read() == b""
    conn.close()
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "pw", "1.0", "web test")
    for sid, answer in ((session.handle, b"HTTP/1.1 101"), ("OpaqueRef:forged", b"HTTP/1.1 403")):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(f"GET /console?ref=OpaqueRef:x&session_id={sid} HTTP/1.1\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\n\r\nEXTRA".encode())
            data = b""
            while chunk := sock.recv(100):
                data += chunk
            assert data.startswith(answer)
            if answer.endswith(b"101"):
                assert data.endswith(b"EXTRA")     # bytes past the head reach the web app
    session.xenapi.session.logout()


@pytest.mark.parametrize("text,expected", [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)),
                                           ("0.0.0.0:443", ("0.0.0.0", 443))])
def test_listen_addresses(text, expected):
    from dom0.xapi.server import is_loopback, parse_listen
    assert parse_listen(text) == expected
    assert is_loopback(expected[0]) == (expected[0] != "0.0.0.0")     # TLS for all but loopback


@pytest.mark.parametrize("text", ["8080", "localhost:8080", "127.0.0.1:99999"])
def test_bad_api_flag_is_one_line_exit_2(tmp_path, text):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                           "up", "--run-dir", str(tmp_path / "run"), "--api", text],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--api" in proc.stderr, proc.stderr

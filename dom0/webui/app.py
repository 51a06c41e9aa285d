"""The web console's server side: the static pages and the console WebSockets.

dom0's XenAPI server (dom0.xapi) answers the API itself and hands every other request
here: ``http()`` for a GET/HEAD, ``websocket()`` for an ``Upgrade: websocket`` request,
whose socket this object then owns. The browser app does everything else through the
XenAPI's JSON-RPC, as any client would.

Trust boundary (every request is hostile):

| what            | check                                                                 | answer |
|-----------------|-----------------------------------------------------------------------|--------|
| path            | a key of STATIC_FILES (a fixed table: the filesystem is never named)  | 404    |
| method          | GET or HEAD                                                           | 405    |
| WebSocket path  | CONSOLE_PATH                                                          | 404    |
| Origin          | absent (non-browser client) or the same host:port as Host             | 403    |
| session_id      | a live session (sessions.user_of)                                     | 403    |
| ref             | a console of a running VM (consoles.pty_path)                         | 404    |
| the handshake   | dom0.webui.websocket.handshake                                        | 400/405/426 |
| open consoles   | at most MAX_CONSOLES at once                                          | 503    |
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Protocol
from urllib.parse import urlsplit

from dom0.webui import websocket as ws
from dom0.webui.console_bridge import ConsoleBridge

log = logging.getLogger("dom0.webui")

CONSOLE_PATH = "/console"
MAX_CONSOLES = 64
# url path -> (file under static/, content type)
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/vendor/xterm.js": ("vendor/xterm.js", "text/javascript; charset=utf-8"),
    "/vendor/xterm.css": ("vendor/xterm.css", "text/css; charset=utf-8"),
}
# xterm.js adds <style> elements for its cells: inline styles are allowed, scripts only from here
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy",
     "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    ("Referrer-Policy", "no-referrer"),
]
REASONS = {101: "Switching Protocols", 200: "OK", 304: "Not Modified", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 426: "Upgrade Required",
           500: "Internal Server Error", 503: "Service Unavailable"}

Response = tuple[int, list[tuple[str, str]], bytes]


class Sessions(Protocol):
    def user_of(self, session_ref: str) -> str | None: ...


class Consoles(Protocol):
    def pty_path(self, console_ref: str) -> str | None: ...


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _load_static() -> dict[str, StaticFile]:
    """Read the table's files once, at start: a request never touches the filesystem."""
    root = resources.files("dom0.webui") / "static"
    loaded: dict[str, StaticFile] = {}
    for path, (name, content_type) in STATIC_FILES.items():
        body = root.joinpath(*name.split("/")).read_bytes()
        loaded[path] = StaticFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return loaded


def http_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error(status: int, message: str, extra: list[tuple[str, str]] | None = None) -> Response:
    body = (message + "\n").encode()
    return status, [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"),
                    *SECURITY_HEADERS, *(extra or [])], body


def _same_origin(headers: dict[str, str]) -> bool:
    origin, host = headers.get("origin"), headers.get("host", "")
    if origin is None:
        return True     # not a browser: a session id is what it needs
    try:
        return urlsplit(origin).netloc.lower() == host.lower() and bool(host)
    except ValueError:
        return False


class WebApp:
    def __init__(self, add_reader: Callable[[object, Callable[[], None]], None],
                 remove_reader: Callable[[object], None], sessions: Sessions, consoles: Consoles):
        self.add_reader, self.remove_reader = add_reader, remove_reader
        self.sessions, self.consoles = sessions, consoles
        self.files = _load_static()
        self.bridges: set[ConsoleBridge] = set()

    def http(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> Response:
        if method not in ("GET", "HEAD"):
            return _error(405, "only GET and HEAD are served here", [("Allow", "GET, HEAD")])
        static = self.files.get(path)
        if static is None:
            return _error(404, "no such page")
        h = {k.lower(): v for k, v in headers.items()}
        common = [("ETag", static.etag), ("Cache-Control", "no-cache"), *SECURITY_HEADERS]
        if static.etag in (t.strip() for t in h.get("if-none-match", "").split(",")):
            return 304, common, b""
        body = static.body if method == "GET" else b""
        # HEAD: the length GET would have
        return 200, [("Content-Type", static.content_type), ("Content-Length", str(len(static.body))),
                     *common], body

    def websocket(self, path: str, query: dict[str, str], headers: dict[str, str],
                  sock: socket.socket, leftover: bytes) -> None:
        """Take the socket over: refuse it with an HTTP error, or answer 101 and bridge it to
        the console's pty."""
        try:
            refusal = self._open_console(path, query, {k.lower(): v for k, v in headers.items()},
                                         sock, leftover)
        except Exception:   # a bug here must neither leave the socket open nor reach the server
            log.exception("opening a console WebSocket")
            refusal = _error(500, "internal error")
        if refusal is not None:
            self._refuse(sock, *refusal)

    def _open_console(self, path: str, query: dict[str, str], h: dict[str, str], sock: socket.socket,
                      leftover: bytes) -> Response | None:
        """None once the socket is a console's; else the HTTP error to answer with."""
        if path != CONSOLE_PATH:
            return _error(404, "no WebSocket here")
        try:
            accept = ws.handshake("GET", h)
        except ws.HandshakeError as e:
            return _error(e.status, e.reason, e.headers)
        if not _same_origin(h):
            return _error(403, "a page of another site may not open a console")
        session_ref = query.get("session_id", "")
        if self.sessions.user_of(session_ref) is None:
            return _error(403, "session_id is not a live session: log in first")
        ref = query.get("ref", "")
        pty_path = self.consoles.pty_path(ref)
        if pty_path is None:
            return _error(404, "no such console, or its VM is not running")
        if len(self.bridges) >= MAX_CONSOLES:
            return _error(503, f"{MAX_CONSOLES} consoles are open already")
        try:
            pty_fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            return _error(404, f"the console cannot be opened: {e.strerror}")
        bridge = ConsoleBridge(sock, pty_fd, ref, self.add_reader, self.remove_reader, self._closed,
                               allowed=lambda: self.sessions.user_of(session_ref) is not None)
        self.bridges.add(bridge)
        try:
            bridge.start(http_head(101, accept), leftover)
        except Exception:
            bridge.close()
            raise
        return None

    def _refuse(self, sock: socket.socket, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        headers = [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]
        try:
            sock.setblocking(False)
            sock.send(http_head(status, headers) + body)   # small: fits an empty socket buffer
        except OSError:
            pass
        sock.close()

    def tick(self) -> None:
        """Push the output sockets could not take earlier (the loop watches readers only, so
        nothing else would until the guest prints again or a key is typed). The server calls
        it on every turn of dom0's loop; it costs nothing while no console is behind."""
        for bridge in list(self.bridges):
            if bridge.to_socket:
                bridge.flush()

    def _closed(self, bridge: ConsoleBridge) -> None:
        self.bridges.discard(bridge)

    def close(self) -> None:
        for bridge in list(self.bridges):
            bridge.conn.close(ws.CLOSE_GOING_AWAY, "dom0 is stopping")
            bridge.close()


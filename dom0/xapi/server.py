"""The XenAPI's HTTP server on dom0's one selector loop (dom0.xenstored.unix_socket.SocketServer).

Rules of every connection (a client is hostile; dom0 serves its guests first):
* Nothing blocks: sockets are non-blocking, a response waits in the connection's queue
  and goes when the socket is writable; while a response is unsent, or a call waits
  (event.from, clean_shutdown: a Pending, answered from `tick`), no further request of
  that connection is read or handled (its kernel buffer fills instead).
* Bytes go through the sans-IO engine (dom0.xapi.http): a malformed or oversized
  request is answered with its 4xx and the connection closed. POST / is XML-RPC,
  POST /jsonrpc JSON-RPC; a body that is not a call is 400; a call's failure is a
  XAPI error inside a 200, as xapi answers. GET/HEAD of any other path goes to the web
  app (dom0.webui, the contract in docs/xenapi.md), a WebSocket upgrade hands it the
  socket; without a web app those are 404.
* At most MAX_CONNECTIONS are held: past it the one idle longest (no call waiting)
  is closed. A connection idle for IDLE_SECONDS is closed too.
* TLS (any address but loopback): the handshake runs non-blocking on the loop, with a
  self-signed certificate made on first use (openssl) in the run directory.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import subprocess
import time
from typing import Any

from dom0.xapi import http
from dom0.xapi.errors import ApiError
from dom0.xapi.model import Api, Pending
from dom0.xapi.wire import Call, WireError, decode_jsonrpc, decode_xmlrpc, encode_jsonrpc, encode_xmlrpc
from dom0.xenstored.unix_socket import accepted, received

log = logging.getLogger("dom0.xapi.server")
DEFAULT_LISTEN = ("127.0.0.1", 8080)
MAX_CONNECTIONS = 256
IDLE_SECONDS = 300.0
ACCEPTS_PER_TURN = 64
REQUESTS_PER_TURN = 16
_RECV_BYTES = 65536
TICK_SECONDS = 0.2              # how often the model is compared for events when someone listens


class ListenError(Exception):
    """The API cannot listen where asked (one line)."""


def parse_listen(text: str) -> tuple[str, int]:
    """"ADDR:PORT" (or "[v6]:PORT") -> (address, port); ValueError with one line if not."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--api {text!r}: expected ADDR:PORT (e.g. 127.0.0.1:8080) or off")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--api {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def self_signed_context(directory: str, host: str) -> ssl.SSLContext:
    """A server context with the certificate in `directory` (made by openssl on first use)."""
    cert, key = os.path.join(directory, "xapi-cert.pem"), os.path.join(directory, "xapi-key.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        try:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                            "-subj", f"/CN={host}", "-keyout", key, "-out", cert],
                           check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise ListenError(f"cannot make the API's TLS certificate with openssl: {e}") from None
        os.chmod(key, 0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class _Connection:
    def __init__(self, sock: socket.socket, tls: bool):
        self.sock = sock
        self.reader = http.RequestReader()
        self.out = b""
        self.close_after = False
        self.pending: tuple[Pending, Call, str, bool] | None = None
        self.handshaking = tls
        self.last_active = time.monotonic()


class XapiServer:
    def __init__(self, api: Api, loop, listen: tuple[str, int] = DEFAULT_LISTEN, web: Any = None,
                 tls_dir: str | None = None, fallback_port: bool = True, tls: bool | None = None):
        """`tls`: None = by the address (TLS on any but loopback); True forces it (tests, on loopback)."""
        self.api = api
        self.loop = loop
        self.web = web
        self.clients: dict[socket.socket, _Connection] = {}
        host, port = listen
        self.tls: ssl.SSLContext | None = None
        if tls or (tls is None and not is_loopback(host)):
            self.tls = self_signed_context(tls_dir or ".", host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as e:
            if not fallback_port:
                self.listener.close()
                raise ListenError(f"cannot listen on {host}:{port}: {e.strerror}") from None
            self.listener.bind((host, 0))     # the default port is taken: any free one, printed by `up`
        self.listener.listen(socket.SOMAXCONN)
        self.listener.setblocking(False)
        self.host, self.port = self.listener.getsockname()[:2]
        self._next_tick = 0.0
        loop.watch(self.listener, "the XenAPI listening socket", self._accept, on_failure=lambda: None)

    @property
    def url(self) -> str:
        """Where clients reach us (console locations name it): a wildcard bind is named by the host's name."""
        host = os.uname().nodename if ipaddress.ip_address(self.host).is_unspecified else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    # --- connections ---

    def _accept(self) -> None:
        for sock in accepted(self.listener, ACCEPTS_PER_TURN):
            if len(self.clients) >= MAX_CONNECTIONS:
                self._drop_idlest()
            sock.setblocking(False)
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
            conn = self.clients[sock] = _Connection(sock, self.tls is not None)
            self._rewatch(conn)

    def _drop_idlest(self) -> None:
        idle = [c for c in self.clients.values() if c.pending is None] or list(self.clients.values())
        self._drop(min(idle, key=lambda c: c.last_active))

    def _rewatch(self, conn: _Connection, want_write: bool = False) -> None:
        writing = bool(conn.out) or want_write
        reading = not writing and conn.pending is None
        self.loop.watch(conn.sock, "a XenAPI connection",
                        (lambda: self._read(conn)) if reading else None,
                        (lambda: self._write(conn)) if writing else None,
                        on_failure=lambda: self._drop(conn))
        if not reading and not writing:
            self.loop.unwatch(conn.sock)     # waiting for a Pending: tick() answers it

    def _drop(self, conn: _Connection) -> None:
        if self.clients.pop(conn.sock, None) is None:
            return
        self.loop.unwatch(conn.sock)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _handshake(self, conn: _Connection) -> bool:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._rewatch(conn)
            return False
        except ssl.SSLWantWriteError:
            self._rewatch(conn, want_write=True)
            return False
        except (OSError, ValueError):
            self._drop(conn)
            return False
        conn.handshaking = False
        return True

    def _read(self, conn: _Connection) -> None:
        if conn.handshaking and not self._handshake(conn):
            return
        data = received(conn.sock, _RECV_BYTES)
        if data is None:
            return
        if not data:
            self._drop(conn)
            return
        # TLS may hold decrypted bytes the socket's fd no longer signals: take them now
        while isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending() and len(data) <= http.MAX_BODY:
            try:
                data += conn.sock.recv(_RECV_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, OSError):
                break
        conn.last_active = time.monotonic()
        conn.reader.feed(data)
        self._serve(conn)

    def _write(self, conn: _Connection) -> None:
        if conn.handshaking:
            if self._handshake(conn):
                self._rewatch(conn)
            return
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sent = 0
            except OSError:
                self._drop(conn)
                return
            conn.out = conn.out[sent:]
            conn.last_active = time.monotonic()
        if conn.out:
            self._rewatch(conn)
        elif conn.close_after:
            self._drop(conn)
        else:
            self._serve(conn)

    def _serve(self, conn: _Connection) -> None:
        """Handle whole requests while nothing waits to be sent, a few per turn of the loop."""
        more = False
        for turn in range(REQUESTS_PER_TURN + 1):
            if conn.out or conn.pending is not None or conn.close_after:
                break
            if turn == REQUESTS_PER_TURN:
                more = True         # requests may wait whole in the buffer: the next turn serves them
                break
            try:
                request = conn.reader.next_request()
            except http.HttpError as e:
                conn.out, conn.close_after = http.error_response(e), True
                break
            if request is None:
                break
            if request.upgrade_websocket and request.method == "GET" and self.web is not None:
                self._hand_over(conn, request)
                return
            self._handle(conn, request)
        if conn.sock in self.clients:
            self._rewatch(conn, want_write=more)      # writable at once: served on the loop's next turn

    def _hand_over(self, conn: _Connection, request: http.Request) -> None:
        """The contract with dom0.webui: the web app takes the socket; we forget it."""
        self.clients.pop(conn.sock, None)
        self.loop.unwatch(conn.sock)
        leftover = bytes(conn.reader.buffer)
        try:
            self.web.websocket(request.path, request.query, request.headers, conn.sock, leftover)
        except Exception:
            log.exception("the web app failed to take the WebSocket on %s", request.path[:100])
            conn.sock.close()

    def _handle(self, conn: _Connection, request: http.Request) -> None:
        keep = request.keep_alive
        conn.close_after = not keep
        if request.method == "POST" and request.path in ("/", "/RPC2", "/jsonrpc"):
            kind = "json" if request.path == "/jsonrpc" else "xml"
            try:
                call = decode_jsonrpc(request.body) if kind == "json" else decode_xmlrpc(request.body)
            except WireError as e:
                conn.out = http.response(400, (str(e) + "\n").encode(), [("Content-Type", "text/plain")], keep)
                return
            try:
                result = self.api.call(call.method, call.params)
            except ApiError as e:
                conn.out = self._reply(call, kind, keep, error=e)
                return
            if isinstance(result, Pending):
                conn.pending = (result, call, kind, keep)
                self._answer_pending(conn, time.monotonic())
            else:
                conn.out = self._reply(call, kind, keep, result=result)
            return
        if request.method in ("GET", "HEAD") and self.web is not None and not request.upgrade_websocket:
            try:
                status, headers, body = self.web.http(request.method, request.path, request.query, request.headers)
            except Exception:
                log.exception("the web app failed on %s", request.path[:100])
                status, headers, body = 500, [("Content-Type", "text/plain")], b"internal error\n"
            conn.out = http.response(status, body, headers, keep, head_only=request.method == "HEAD")
            return
        status = 404 if request.method in ("GET", "HEAD") else 405
        conn.out = http.response(status, b"XenAPI: POST / (XML-RPC) or /jsonrpc (JSON-RPC)\n",
                                 [("Content-Type", "text/plain")], keep, head_only=request.method == "HEAD")

    @staticmethod
    def _reply(call: Call, kind: str, keep: bool, result: Any = None, error: ApiError | None = None) -> bytes:
        if kind == "json":
            return http.response(200, encode_jsonrpc(call, result, error), [("Content-Type", "application/json")], keep)
        return http.response(200, encode_xmlrpc(result, error), [("Content-Type", "text/xml")], keep)

    def _answer_pending(self, conn: _Connection, now: float) -> None:
        assert conn.pending is not None
        pending, call, kind, keep = conn.pending
        done, result = pending.poll(now)
        if not done:
            return
        conn.pending = None
        conn.out = (self._reply(call, kind, keep, error=result) if isinstance(result, ApiError)
                    else self._reply(call, kind, keep, result=result))
        if conn.sock in self.clients:
            self._rewatch(conn)

    # --- the loop's periodic pass ---

    def tick(self) -> None:
        """Called on every turn of dom0's loop: events, waiting calls, idle connections."""
        now = time.monotonic()
        waiting = [c for c in self.clients.values() if c.pending is not None]
        if now >= self._next_tick:
            # while calls wait for events, look twice as often: they are answered sooner
            self._next_tick = now + (TICK_SECONDS / 2 if waiting else TICK_SECONDS)
            if self.api.sessions.sessions:
                self.api.refresh()
            self.api.tick()
            for conn in self.clients.copy().values():
                if conn.pending is None and not conn.out and now - conn.last_active > IDLE_SECONDS:
                    self._drop(conn)
        for conn in waiting:
            if conn.sock in self.clients and conn.pending is not None:
                self._answer_pending(conn, now)
        self._web_hook("tick")      # dom0.webui: console output a full socket could not take

    def _web_hook(self, name: str) -> None:
        """The web app's optional tick()/close() (dom0.webui's WebApp has them; the contract's
        http()/websocket() are all a web app must have)."""
        hook = getattr(self.web, name, None)
        if hook is not None:
            hook()

    def close(self) -> None:
        self._web_hook("close")     # its consoles get a close frame saying dom0 stops
        for conn in list(self.clients.values()):
            self._drop(conn)
        self.loop.unwatch(self.listener)
        self.listener.close()

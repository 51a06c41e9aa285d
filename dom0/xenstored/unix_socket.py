"""Unix socket transport for dom0 tools (libxenstore's socket mode).

libxenstore 4.17 connects to the path in $XENSTORED_PATH (default
/run/xenstored/socket) with a plain SOCK_STREAM connect; there is no
separate read-only socket any more (xs_daemon_socket_ro() returns the same
path).  Every socket client is a privileged dom0 connection.

The server is a single-threaded ``selectors`` loop.  Other transports (the
guest rings) can be attached so that watch events caused by socket clients
reach guests, and the loop can be driven one step at a time (``poll``) or
until ``stop()`` is called (``serve_forever``).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

from .core import Engine
from .ring import RingServer

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

log = logging.getLogger("dom0.xenstored.socket")

_RECV_BYTES = 65536
# A tool that sends requests without reading replies is not read from
# while this much output is waiting for it.
_MAX_UNREAD_OUTPUT = 1 << 20


class _Client:
    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.pending = b""  # taken from the engine, not yet accepted by the kernel


class SocketServer:
    def __init__(self, engine: Engine, path: str,
                 other_transports: Iterable[RingServer] = ()) -> None:
        self.engine = engine
        self.path = path
        self.other_transports = list(other_transports)
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}  # by engine connection id
        self._stopping = threading.Event()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, None)

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a previous run
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)  # dom0 root tools only
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        # Output queued by other threads (LocalClient, ring kicks) wakes us.
        engine.wakeup = self._wake

    # -- loop ------------------------------------------------------------------

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            self.poll(timeout=1.0)
        self.close()

    def stop(self) -> None:
        """Thread-safe: ask serve_forever() to return."""
        self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wakeup_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def poll(self, timeout: float | None = 0.0) -> None:
        ready = self.selector.select(timeout)
        with self.engine.lock:
            self._handle(ready)
            self._flush_dirty()

    def _handle(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, events in ready:
            if key.data == "listener":
                self._accept()
            elif key.data is None:
                self._drain_wakeup()
            elif callable(key.data):
                key.data()
            else:
                client = key.data
                if events & selectors.EVENT_READ:
                    self._read(client)
                if events & selectors.EVENT_WRITE and client.conn_id in self.clients:
                    self._write(client)

    def add_reader(self, fileobj: FileDescriptorLike, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in this loop whenever ``fileobj`` is readable
        (e.g. the event-channel fd whose kicks go to RingServer.kick), so
        that the single-threaded engine is only ever touched from here."""
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def _drain_wakeup(self) -> None:
        try:
            self._wakeup_r.recv(4096)
        except OSError:
            pass

    # -- clients -----------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        client = _Client(sock, self.engine.open_connection(domid=0))
        self.clients[client.conn_id] = client
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        self.engine.feed(client.conn_id, data)

    def _write(self, client: _Client) -> None:
        while True:
            if not client.pending:
                client.pending = self.engine.data_to_send(client.conn_id, _RECV_BYTES)
                if not client.pending:
                    break
            try:
                sent = client.sock.send(client.pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            client.pending = client.pending[sent:]
        conn = self.engine.connections.get(client.conn_id)
        if conn is not None and conn.broken is not None and not client.pending:
            self._drop(client)  # protocol violation: nothing more to say
            return
        backlog = len(client.pending) + (conn.out_bytes if conn is not None else 0)
        wanted = ((selectors.EVENT_READ if backlog < _MAX_UNREAD_OUTPUT else 0)
                  | (selectors.EVENT_WRITE if client.pending else 0))
        self.selector.modify(client.sock, wanted or selectors.EVENT_READ, client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.conn_id, None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        self.engine.close_connection(client.conn_id)

    def _flush_dirty(self) -> None:
        dirty = self.engine.take_dirty()
        # Broken socket connections are dirty too, so they get dropped here.
        for conn_id in dirty:
            client = self.clients.get(conn_id)
            if client is not None:
                self._write(client)
        others = {conn_id for conn_id in dirty if conn_id not in self.clients}
        for transport in self.other_transports:
            transport.flush(others)

    def close(self) -> None:
        if self.engine.wakeup == self._wake:
            self.engine.wakeup = None
        for client in list(self.clients.values()):
            self._drop(client)
        for sock in (self.listener, self._wakeup_r, self._wakeup_w):
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self.selector.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

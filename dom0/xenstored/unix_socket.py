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

import collections
import functools
import logging
import os
import selectors
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .core import Engine
from .ring import RingServer

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

log = logging.getLogger("dom0.xenstored.socket")

_RECV_BYTES = 65536
# Input is handed to the engine in slices this big, and only while the client's unread
# output is below _MAX_UNREAD_OUTPUT: the replies to one slice are bounded (at most
# 4096 / 16 requests of at most XENSTORE_PAYLOAD_MAX each), so a tool that writes
# requests without reading replies stops being read instead of growing dom0's memory.
_FEED_BYTES = 4096
_MAX_UNREAD_OUTPUT = 1 << 20
# Replies alone stay below about 2 MiB (above); only watch events the tool never
# collects take a client past this, and such a client is dropped (as a guest over
# its memory quota loses events, a socket client loses its connection).
_MAX_BACKLOG = 4 << 20
# A callback that keeps failing has its traceback logged this many times, then one
# line every _LOG_EVERY failures: the log stays bounded.
_TRACEBACKS_LOGGED = 3
_LOG_EVERY = 1000
ACCEPTS_PER_TURN = 16   # a burst of connects is taken in a few turns of the loop


def received(sock: socket.socket, size: int) -> bytes | None:
    """What a non-blocking socket (plain or TLS) has for us: None when nothing yet (TLS may want
    another record first), b"" once the peer closed it or it failed, which the caller drops."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except OSError:
        return b""


def accepted(listener: socket.socket, limit: int = ACCEPTS_PER_TURN) -> Iterable[socket.socket]:
    """The connections waiting on a non-blocking listener, at most `limit` of them this turn, so
    a burst never starves the loop's other work; an accept error (none left, out of fds) ends it.
    Every listening socket on dom0's loop (xenstored, the toolstack, the XenAPI) takes them so."""
    for _ in range(limit):
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        yield sock


@dataclass(eq=False)
class _Watch:
    """What the loop does with one file: call ``reader`` when it is readable, ``writer``
    when it is writable (each None: not wanted), and ``on_failure`` when either raised
    (None: stop watching the file)."""
    what: str
    reader: Callable[[], None] | None
    writer: Callable[[], None] | None = None
    on_failure: Callable[[], None] | None = None

    @property
    def events(self) -> int:
        return ((selectors.EVENT_READ if self.reader else 0)
                | (selectors.EVENT_WRITE if self.writer else 0))


class _Client:
    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.pending = b""  # taken from the engine, not yet accepted by the kernel
        self.unfed = b""    # received, not yet handed to the engine
        self.watching: tuple[bool, bool] | None = None  # (reading, writing) as last asked of the loop


class SocketServer:
    """xenstored's socket, and the one event loop of the process that serves it.

    Rules of the loop (dom0 runs everything on it, so these are its safety rules):
    * Every file is watched through ``watch()``, and every callback the loop makes
      (a reader, a writer, accepting, a xenstore client's bytes) runs behind the same
      guard: an exception is logged (bounded) and ends only that file's watch (its
      ``on_failure``: a client is dropped), never the loop.
    * Nothing in a callback blocks: sockets are non-blocking, output waits in a
      per-client queue and is sent when the selector says the socket is writable.
    * A client's queued output is bounded: it stops being read while much output is
      unread, and is dropped once past the hard bound, so no client can hold up
      another or a guest's ring.
    """

    def __init__(self, engine: Engine, path: str,
                 other_transports: Iterable[RingServer] = ()) -> None:
        self.engine = engine
        self.path = path
        self.other_transports = list(other_transports)
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}  # by engine connection id
        self.failures: collections.Counter[str] = collections.Counter()
        self._stopping = threading.Event()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self.watch(self._wakeup_r, "the loop's wake-up socket", self._drain_wakeup,
                   on_failure=lambda: None)

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a previous run
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)  # dom0 root tools only
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.watch(self.listener, "xenstored's listening socket", self._accept, on_failure=lambda: None)
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
            for key, events in ready:
                self._dispatch(key, events)
            self._flush_dirty()     # isolates each client and transport itself

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        watch: _Watch = key.data
        if self._watch_of(key.fileobj) is not watch:
            return      # an earlier callback of this turn dropped or re-watched the file
        try:
            if events & selectors.EVENT_READ and watch.reader is not None:
                watch.reader()
            # the reader may have dropped the file, or changed what is watched
            if events & selectors.EVENT_WRITE and self._watch_of(key.fileobj) is watch \
                    and watch.writer is not None:
                watch.writer()
        except Exception:
            self._log_failure(watch.what)
            if watch.on_failure is None:
                self.unwatch(key.fileobj)
            else:
                self.isolate(f"cleaning up after {watch.what}", watch.on_failure)

    def isolate(self, what: str, fn: Callable[[], None]) -> bool:
        """Run ``fn()``; an exception is logged (bounded) and reported as False, never raised.
        The loop calls every callback this way; dom0 runs its periodic passes through it."""
        try:
            fn()
        except Exception:
            self._log_failure(what)
            return False
        return True

    def _log_failure(self, what: str) -> None:
        self.failures[what] += 1
        count = self.failures[what]
        if count <= _TRACEBACKS_LOGGED:
            log.exception("%s failed (isolated; the loop goes on)", what)
        elif count % _LOG_EVERY == 0:
            log.error("%s failed %d times so far", what, count)

    def watch(self, fileobj: FileDescriptorLike, what: str, reader: Callable[[], None] | None,
              writer: Callable[[], None] | None = None,
              on_failure: Callable[[], None] | None = None) -> None:
        """Watch ``fileobj`` (again: this replaces what was watched) for the callbacks given;
        with neither a reader nor a writer, stop watching it."""
        entry = _Watch(what, reader, writer, on_failure)
        if not entry.events:
            self.unwatch(fileobj)
        elif self._watch_of(fileobj) is None:
            self.selector.register(fileobj, entry.events, entry)
        else:
            self.selector.modify(fileobj, entry.events, entry)

    def unwatch(self, fileobj: FileDescriptorLike) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def _watch_of(self, fileobj: FileDescriptorLike) -> _Watch | None:
        try:
            watch: _Watch = self.selector.get_key(fileobj).data
        except (KeyError, ValueError):
            return None
        return watch

    def add_reader(self, fileobj: FileDescriptorLike, callback: Callable[[], None],
                   on_failure: Callable[[], None] | None = None) -> None:
        """Run ``callback()`` in this loop whenever ``fileobj`` is readable
        (e.g. the event-channel fd whose kicks go to RingServer.kick), so
        that the single-threaded engine is only ever touched from here."""
        self.watch(fileobj, getattr(callback, "__qualname__", "a reader"), callback, on_failure=on_failure)

    def _drain_wakeup(self) -> None:
        try:
            self._wakeup_r.recv(4096)
        except OSError:
            pass

    # -- clients -----------------------------------------------------------------

    def _accept(self) -> None:
        for sock in accepted(self.listener):
            sock.setblocking(False)
            client = _Client(sock, self.engine.open_connection(domid=0))
            self.clients[client.conn_id] = client
            self._rewatch(client)

    def _rewatch(self, client: _Client) -> None:
        conn = self.engine.connections.get(client.conn_id)
        backlog = len(client.pending) + (conn.out_bytes if conn is not None else 0)
        wanted = (backlog < _MAX_UNREAD_OUTPUT and not client.unfed, bool(client.pending))
        if wanted == client.watching:
            return
        client.watching = wanted
        reading, writing = wanted
        self.watch(client.sock, f"xenstore socket connection {client.conn_id}",
                   (lambda: self._read(client)) if reading else None,
                   (lambda: self._write(client)) if writing else None,
                   on_failure=lambda: self._drop(client))

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
        client.unfed += data
        self._write(client)

    def _write(self, client: _Client) -> None:
        """Move bytes both ways as far as they go without blocking, then watch for the rest."""
        conn = self.engine.connections.get(client.conn_id)
        while True:
            backlog = len(client.pending) + (conn.out_bytes if conn is not None else 0)
            fed = b""
            if client.unfed and backlog < _MAX_UNREAD_OUTPUT:
                fed, client.unfed = client.unfed[:_FEED_BYTES], client.unfed[_FEED_BYTES:]
                self.engine.feed(client.conn_id, fed)
            if not client.pending:
                client.pending = self.engine.data_to_send(client.conn_id, _RECV_BYTES)
            sent = 0
            if client.pending:
                try:
                    sent = client.sock.send(client.pending)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._drop(client)
                    return
                client.pending = client.pending[sent:]
            if not fed and not sent:
                break
        if conn is not None and conn.broken is not None and not client.pending:
            self._drop(client)  # protocol violation: nothing more to say
            return
        backlog = len(client.pending) + (conn.out_bytes if conn is not None else 0)
        if backlog > _MAX_BACKLOG:
            log.warning("xenstore socket connection %d dropped: %d bytes of output it does not read",
                        client.conn_id, backlog)
            self._drop(client)
            return
        self._rewatch(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.conn_id, None)
        self.unwatch(client.sock)
        client.sock.close()
        self.engine.close_connection(client.conn_id)

    def _flush_dirty(self) -> None:
        dirty = self.engine.take_dirty()
        # Broken socket connections are dirty too, so they get dropped here.
        for conn_id in dirty:
            client = self.clients.get(conn_id)
            # each client on its own: one failing is dropped, the others still get their output
            if client is not None and not self.isolate(f"xenstore socket connection {conn_id}",
                                                       functools.partial(self._write, client)):
                self._drop(client)
        others = {conn_id for conn_id in dirty if conn_id not in self.clients}
        for transport in self.other_transports:
            self.isolate("serving the guests' rings", functools.partial(transport.flush, others))

    def close(self) -> None:
        if self.engine.wakeup == self._wake:
            self.engine.wakeup = None
        for client in list(self.clients.values()):
            self._drop(client)
        for sock in (self.listener, self._wakeup_r, self._wakeup_w):
            self.unwatch(sock)
            sock.close()
        self.selector.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

"""One browser console: a WebSocket (dom0.webui.websocket) <-> a guest console pty.

Keystrokes arrive as text or binary messages and are written to the pty, whose other
end dom0's console backend puts into the guest's input ring; what the guest prints
comes out of the pty and leaves as binary messages (xterm.js decodes the UTF-8 across
message boundaries). Everything runs on dom0's one loop, never blocking it:

- the socket and the pty are non-blocking; both are read when the loop says they are
  readable, and every such turn also pushes out what is pending; a TLS socket (the API
  off loopback) may want to read or write before it can do the other (SSLWant*: try
  again on the next turn) and may hold decrypted bytes the loop cannot see (pending()):
  those are read on the same turn;
- the loop watches readers only, so output the socket could not take waits for the next
  flush: more output, a keystroke, or the web app's tick(); past MAX_PENDING_OUTPUT it is
  dropped and counted,
  and the browser is told how much once the socket takes bytes again, as the console
  backend does for a pty nobody reads;
- keystrokes the pty cannot take wait up to MAX_PENDING_INPUT, then are dropped;
- the pty closing (the domain died, EIO) closes the WebSocket with that reason; the
  browser closing, or breaking the protocol, closes the pty and the socket;
- the session it was opened with is asked again (``allowed()``) before any byte moves:
  once it is logged out, the console closes with 1008, as a new one would be refused.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable

from dom0.webui import websocket as ws

log = logging.getLogger("dom0.webui")
READ_CHUNK = 64 * 1024
MAX_PENDING_OUTPUT = 1 << 20
MAX_PENDING_INPUT = 64 * 1024
CLOSE_CONSOLE_GONE = 4000       # application code [7.4.2]: the guest's console is gone
# "not now" from a non-blocking socket, plain or TLS
NOT_NOW = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ConsoleBridge:
    def __init__(self, sock: socket.socket, pty_fd: int, name: str,
                 add_reader: Callable[[object, Callable[[], None]], None],
                 remove_reader: Callable[[object], None],
                 on_closed: Callable[[ConsoleBridge], None], allowed: Callable[[], bool]):
        self.sock = sock
        self.pty_fd: int | None = pty_fd
        self.name = name
        self.conn = ws.Connection()
        self._add_reader, self._remove_reader, self._on_closed = add_reader, remove_reader, on_closed
        self._allowed = allowed
        self.to_socket = bytearray()
        self.to_pty = bytearray()
        self.dropped_output = 0
        self.closed = False

    def start(self, response_head: bytes, leftover: bytes) -> None:
        """Answer the upgrade (``response_head`` goes out first), read what the client sent past
        its request, and join the loop."""
        self.to_socket += response_head
        self.sock.setblocking(False)
        assert self.pty_fd is not None
        os.set_blocking(self.pty_fd, False)
        self._add_reader(self.sock, self.on_socket_readable)
        self._add_reader(self.pty_fd, self.on_pty_readable)
        if leftover:
            self._feed(leftover)
        self.flush()

    # -- the loop's callbacks ------------------------------------------------------------------

    def on_socket_readable(self) -> None:
        data = self._recv()
        if data is None:
            return
        if not data:
            self.close()
            return
        self._feed(data)
        self.flush()

    def _recv(self) -> bytes | None:
        """What the socket has now (b"" at its end, None if nothing yet), TLS's buffer included."""
        try:
            data = self.sock.recv(READ_CHUNK)
        except NOT_NOW:
            return None
        except OSError:
            return b""
        while data and isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() and len(data) < 4 * READ_CHUNK:
            try:
                data += self.sock.recv(READ_CHUNK)
            except OSError:     # not now, or the end: this turn's bytes go first
                break
        return data

    def on_pty_readable(self) -> None:
        if self.pty_fd is None:
            return
        try:
            data = os.read(self.pty_fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno != errno.EIO:
                log.info("console %s: reading its pty: %s", self.name, e)
            data = b""
        if not data:
            self._pty_gone("the guest's console closed (the domain is gone)")
            return
        if self._still_allowed():
            self._output(data)
        self.flush()

    # -- the two directions ----------------------------------------------------------------------

    def _still_allowed(self) -> bool:
        if self._allowed():
            return True
        self._close_pty()
        self.conn.close(ws.CLOSE_POLICY, "the session ended: log in again")
        return False

    def _feed(self, data: bytes) -> None:
        for event in self.conn.receive(data):
            if isinstance(event, (ws.TextMessage, ws.BinaryMessage)) and not self._still_allowed():
                return
            if isinstance(event, ws.TextMessage):
                self._input(event.text.encode("utf-8"))
            elif isinstance(event, ws.BinaryMessage):
                self._input(event.data)
            elif isinstance(event, ws.Closed):
                self._close_pty()

    def _input(self, keys: bytes) -> None:
        room = MAX_PENDING_INPUT - len(self.to_pty)
        if len(keys) > room:
            log.info("console %s: %d typed bytes dropped (the guest is not reading)", self.name,
                     len(keys) - max(room, 0))
            keys = keys[:max(room, 0)]
        self.to_pty += keys

    def _output(self, data: bytes) -> None:
        if self.conn.state is not ws.State.OPEN:
            return
        if len(self.to_socket) + len(data) > MAX_PENDING_OUTPUT:
            self.dropped_output += len(data)
            return
        if self.dropped_output and not self.to_socket:
            self.conn.send_binary(f"\r\n[pvhyp: {self.dropped_output} bytes of output dropped: "
                                  "the browser was not reading]\r\n".encode())
            self.dropped_output = 0
        self.conn.send_binary(data)

    def flush(self) -> None:
        """Push what is pending, as far as the pty and the socket take it without blocking."""
        if self.to_pty and self.pty_fd is not None:
            try:
                n = os.write(self.pty_fd, self.to_pty)
                del self.to_pty[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._pty_gone("the guest's console closed (the domain is gone)")
        self.to_socket += self.conn.data_to_send()
        while self.to_socket and not self.closed:
            try:
                n = self.sock.send(self.to_socket)
            except NOT_NOW:
                break
            except OSError:
                self.close()
                return
            del self.to_socket[:n]
        if self.conn.state is ws.State.CLOSED and not self.to_socket:
            self.close()

    def _pty_gone(self, reason: str) -> None:
        self._close_pty()
        self.conn.close(CLOSE_CONSOLE_GONE, reason)
        self.flush()

    def _close_pty(self) -> None:
        if self.pty_fd is None:
            return
        fd, self.pty_fd = self.pty_fd, None
        self._remove_reader(fd)
        os.close(fd)

    def close(self) -> None:
        """End both sides at once (the browser left, or dom0 stops)."""
        if self.closed:
            return
        self.closed = True
        self._close_pty()
        self._remove_reader(self.sock)
        self.sock.close()
        self._on_closed(self)

"""A xenbus client: xs_wire messages over a guest's xenstore ring or a Unix socket.

One client for both transports (a Python guest's ring page, a dom0 tool's
socket), as libxenstore is one library for both. Replies are matched by
req_id; XS_WATCH_EVENT messages that arrive in between are queued for
`read_watch`.
"""
from __future__ import annotations

import collections
import itertools
import socket
import time

from abi.io import xs_wire as w
from pvguest.ring import xenstore_rings

_HEADER = w.XSD_SOCKMSG_SIZE


class XenbusError(Exception):
    """xenstored answered XS_ERROR; `.name` is the errno name ("ENOENT")."""

    def __init__(self, name: str, path: str = ""):
        super().__init__(f"{name}" + (f": {path}" if path else ""))
        self.name = name


class RingTransport:
    """The guest side of a struct xenstore_domain_interface page."""

    def __init__(self, page: memoryview, notify, wait, poll_interval: float = 0.05):
        self.req, self.rsp = xenstore_rings(page)
        self.notify = notify            # kick xenstored (EVTCHNOP_send, or nothing when polled)
        self.wait = wait                # wait(timeout): until an event or the timeout
        self.poll_interval = poll_interval

    def send(self, data: bytes) -> None:
        while data:
            n = self.req.write(data)
            data = data[n:]
            self.notify()
            if data:
                self.wait(self.poll_interval)

    def recv(self, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            data = self.rsp.read()
            if data:
                self.notify()           # room in the response ring: tell xenstored
                return data
            if deadline is not None and time.monotonic() >= deadline:
                return b""
            self.wait(self.poll_interval)


class SocketTransport:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None) -> bytes:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return b""
        if not data:
            raise XenbusError("EIO", "xenstored closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


class Xenbus:
    def __init__(self, transport) -> None:
        self.transport = transport
        self._ids = itertools.count(1)
        self._inbuf = b""
        self._replies: dict[int, tuple[int, bytes]] = {}
        self.watch_events: collections.deque[tuple[str, str]] = collections.deque()

    # --- messages ---

    def _pump(self, timeout: float | None) -> bool:
        data = self.transport.recv(timeout)
        if not data:
            return False
        self._inbuf += data
        while len(self._inbuf) >= _HEADER:
            h = w.xsd_sockmsg.parse(self._inbuf[:_HEADER])
            if len(self._inbuf) < _HEADER + h.len:
                break
            payload = self._inbuf[_HEADER:_HEADER + h.len]
            self._inbuf = self._inbuf[_HEADER + h.len:]
            if h.type == w.XS_WATCH_EVENT:
                parts = payload.split(b"\0")
                if len(parts) >= 2:
                    self.watch_events.append((parts[0].decode(errors="replace"),
                                              parts[1].decode(errors="replace")))
            else:
                self._replies[h.req_id] = (h.type, payload)
        return True

    def request(self, msg_type: int, payload: bytes, tx: int = 0, timeout: float = 10.0) -> bytes:
        req_id = next(self._ids) & 0xFFFF_FFFF
        header = w.xsd_sockmsg.build({"type": msg_type, "req_id": req_id, "tx_id": tx,
                                      "len": len(payload)})
        self.transport.send(header + payload)
        deadline = time.monotonic() + timeout
        while req_id not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise XenbusError("ETIMEDOUT", f"no reply to request type {msg_type}")
            self._pump(left)
        reply_type, reply = self._replies.pop(req_id)
        if reply_type == w.XS_ERROR:
            raise XenbusError(reply.rstrip(b"\0").decode(errors="replace"))
        return reply

    # --- the xenbus API ---

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.request(w.XS_READ, path.encode() + b"\0", tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        if isinstance(value, str):
            value = value.encode()
        self.request(w.XS_WRITE, path.encode() + b"\0" + value, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.request(w.XS_MKDIR, path.encode() + b"\0", tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.request(w.XS_RM, path.encode() + b"\0", tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        reply = self.request(w.XS_DIRECTORY, path.encode() + b"\0", tx)
        return [p.decode() for p in reply.split(b"\0")[:-1]]

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        reply = self.request(w.XS_GET_PERMS, path.encode() + b"\0", tx)
        return [p.decode() for p in reply.split(b"\0")[:-1]]

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        self.request(w.XS_SET_PERMS, path.encode() + b"\0" + b"".join(p.encode() + b"\0" for p in perms), tx)

    def get_domain_path(self, domid: int) -> str:
        return self.request(w.XS_GET_DOMAIN_PATH, f"{domid}\0".encode()).rstrip(b"\0").decode()

    def watch(self, path: str, token: str) -> None:
        self.request(w.XS_WATCH, path.encode() + b"\0" + token.encode() + b"\0")

    def unwatch(self, path: str, token: str) -> None:
        self.request(w.XS_UNWATCH, path.encode() + b"\0" + token.encode() + b"\0")

    def transaction_start(self) -> int:
        return int(self.request(w.XS_TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        self.request(w.XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)

    def read_watch(self, timeout: float | None = None) -> tuple[str, str] | None:
        """The next (path, token) watch event, or None after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.watch_events:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._pump(left)
        return self.watch_events.popleft()

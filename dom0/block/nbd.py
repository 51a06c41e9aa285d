"""A small NBD client: the fixed-newstyle handshake and simple replies, sans-IO, plus a socket driver.

qcow2 (and any other format QEMU reads) is served as Xen's own qdisk serves
it, by QEMU: dom0 starts `qemu-nbd` on a Unix socket (`QemuNbd`) and speaks
NBD to it (the protocol is doc/proto.md of the NBD project):

    server: "NBDMAGIC" "IHAVEOPT" u16 handshake flags (FIXED_NEWSTYLE required)
    client: u32 flags (FIXED_NEWSTYLE | NO_ZEROES)
    client: "IHAVEOPT" u32 NBD_OPT_GO u32 len, u32 namelen, name, u16 0 (no info requests)
    server: option replies (magic 0x3e889045565a9, option, type, len, data):
            NBD_REP_INFO/NBD_INFO_EXPORT carries u64 size + u16 transmission flags;
            NBD_REP_ACK ends; a type with bit 31 set is an error: the export is unusable
    then requests: u32 0x25609513, u16 flags, u16 type, u64 cookie, u64 offset, u32 length [+ data]
    and simple replies: u32 0x67446698, u32 error (an errno), u64 cookie [+ data for READ]

Rules of `NbdProtocol`: bytes in (`feed`), bytes out (`data_to_send`);
`feed` returns events (`Ready`, `Reply`); anything the server sends that
the protocol does not allow (bad magic, an unknown cookie, a failed GO)
raises `NbdError` and the connection is finished.  Requests may be
pipelined: replies are matched by cookie.  Structured replies are never
negotiated, so a READ reply is its header plus exactly `length` bytes.
"""
from __future__ import annotations

import errno as host_errno
import itertools
import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_GO = 7
OPT_ABORT = 2
REP_ACK = 1
REP_INFO = 3
REP_ERROR_BIT = 1 << 31
INFO_EXPORT = 0

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4

TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_TRIM = 1 << 5

MAX_REQUEST_BYTES = 32 << 20        # qemu-nbd's NBD_MAX_BUFFER_SIZE

_GREETING = struct.Struct(">QQH")
_OPT = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")


class NbdError(Exception):
    """The server broke the protocol or refused the export: the connection is unusable."""


@dataclass
class Ready:
    size: int
    flags: int

    @property
    def readonly(self) -> bool:
        return bool(self.flags & TFLAG_READ_ONLY)

    @property
    def can_flush(self) -> bool:
        return bool(self.flags & TFLAG_SEND_FLUSH)

    @property
    def can_trim(self) -> bool:
        return bool(self.flags & TFLAG_SEND_TRIM)


@dataclass
class Reply:
    cookie: int
    error: int          # 0 or an errno value
    data: bytes = b""


class NbdProtocol:
    GREETING, OPTIONS, TRANSMISSION, CLOSED = "greeting", "options", "transmission", "closed"

    def __init__(self, export: str = ""):
        self.export = export.encode()
        self.state = self.GREETING
        self._in = bytearray()
        self._out = bytearray()
        self._cookies = itertools.count(1)
        self.inflight: dict[int, tuple[int, int]] = {}    # cookie -> (command, length)
        self.ready: Ready | None = None

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def request(self, command: int, offset: int, length: int, data: bytes | memoryview = b"") -> int:
        if self.state != self.TRANSMISSION:
            raise NbdError(f"request in state {self.state}")
        cookie = next(self._cookies)
        self._out += _REQUEST.pack(REQUEST_MAGIC, 0, command, cookie, offset, length)
        if command == CMD_WRITE:
            self._out += data
        self.inflight[cookie] = (command, length)
        return cookie

    def disconnect(self) -> None:
        if self.state == self.TRANSMISSION:
            self._out += _REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0)
        self.state = self.CLOSED

    def feed(self, data: bytes) -> list[Ready | Reply]:
        self._in += data
        events: list[Ready | Reply] = []
        while True:
            event = self._step()
            if event is None:
                return events
            if isinstance(event, (Ready, Reply)):
                events.append(event)

    def _take(self, n: int) -> bytes | None:
        if len(self._in) < n:
            return None
        out = bytes(self._in[:n])
        del self._in[:n]
        return out

    def _step(self) -> Ready | Reply | bool | None:
        if self.state == self.GREETING:
            raw = self._take(_GREETING.size)
            if raw is None:
                return None
            magic, opt_magic, flags = _GREETING.unpack(raw)
            if magic != NBDMAGIC or opt_magic != IHAVEOPT:
                raise NbdError("not a newstyle NBD server")
            if not flags & FLAG_FIXED_NEWSTYLE:
                raise NbdError("the server does not speak fixed newstyle")
            self._out += struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES))
            payload = struct.pack(">I", len(self.export)) + self.export + struct.pack(">H", 0)
            self._out += _OPT.pack(IHAVEOPT, OPT_GO, len(payload)) + payload
            self.state = self.OPTIONS
            return True
        if self.state == self.OPTIONS:
            if len(self._in) < _OPT_REPLY.size:
                return None
            magic, option, kind, length = _OPT_REPLY.unpack_from(self._in)
            if magic != OPT_REPLY_MAGIC or option != OPT_GO:
                raise NbdError("bad option reply")
            if length > 1 << 16:
                raise NbdError("oversized option reply")
            raw = self._take(_OPT_REPLY.size + length)
            if raw is None:
                return None
            body = raw[_OPT_REPLY.size:]
            if kind & REP_ERROR_BIT:
                raise NbdError(f"the server refused the export: {body.decode(errors='replace')[:200]}")
            if kind == REP_INFO and len(body) >= 12 and struct.unpack_from(">H", body)[0] == INFO_EXPORT:
                size, flags = struct.unpack_from(">QH", body, 2)
                self.ready = Ready(size, flags)
            elif kind == REP_ACK:
                if self.ready is None:
                    raise NbdError("the server acknowledged GO without the export's size")
                self.state = self.TRANSMISSION
                return self.ready
            return True
        if self.state == self.TRANSMISSION:
            if len(self._in) < _REPLY.size:
                return None
            magic, error, cookie = _REPLY.unpack_from(self._in)
            if magic != SIMPLE_REPLY_MAGIC:
                raise NbdError(f"bad reply magic {magic:#x}")
            if cookie not in self.inflight:
                raise NbdError(f"reply to unknown cookie {cookie}")
            command, length = self.inflight[cookie]
            need = _REPLY.size + (length if command == CMD_READ and error == 0 else 0)
            raw = self._take(need)
            if raw is None:
                return None
            del self.inflight[cookie]
            return Reply(cookie, error, raw[_REPLY.size:])
        return None


class NbdConnection:
    """The blocking driver: one Unix socket to the server, requests answered in turn.

    Every failure is an OSError carrying an errno (the server's, or EIO when
    the connection broke), which the block backend answers as an I/O error;
    after a broken connection every request fails with EIO.
    """

    def __init__(self, path: str, export: str = "", timeout: float = 30.0):
        self.proto = NbdProtocol(export)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.broken: str | None = None
        try:
            self.sock.connect(path)
            ready = self._until(lambda events: next((e for e in events if isinstance(e, Ready)), None))
        except (OSError, NbdError) as e:
            self.sock.close()
            raise OSError(host_errno.EIO, f"NBD server at {path}: {e}") from None
        self.size, self.readonly = ready.size, ready.readonly
        self.can_flush, self.can_trim = ready.can_flush, ready.can_trim
        self._replies: dict[int, Reply] = {}

    def _until(self, pick: Callable[[list[Ready | Reply]], T | None]) -> T:
        while True:
            out = self.proto.data_to_send()
            if out:
                self.sock.sendall(out)
            data = self.sock.recv(1 << 20)
            if not data:
                raise NbdError("the server closed the connection")
            found = pick(self.proto.feed(data))
            if found is not None:
                return found

    def _call(self, command: int, offset: int, length: int, data: bytes | memoryview = b"") -> bytes:
        if self.broken:
            raise OSError(host_errno.EIO, f"NBD connection broken: {self.broken}")
        try:
            cookie = self.proto.request(command, offset, length, data)
            self.sock.sendall(self.proto.data_to_send())

            def mine(events: list[Ready | Reply]) -> Reply | None:
                for e in events:
                    if isinstance(e, Reply):
                        self._replies[e.cookie] = e
                return self._replies.pop(cookie, None)
            reply = self._replies.pop(cookie, None) or self._until(mine)
        except (OSError, NbdError) as e:
            self.broken = str(e) or type(e).__name__
            raise OSError(host_errno.EIO, f"NBD connection broken: {self.broken}") from None
        if reply.error:
            raise OSError(reply.error, f"NBD server: {os.strerror(reply.error)}")
        return reply.data

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length:
            n = min(length, MAX_REQUEST_BYTES)
            out += self._call(CMD_READ, offset, n)
            offset, length = offset + n, length - n
        return bytes(out)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for at in range(0, len(view), MAX_REQUEST_BYTES):
            chunk = view[at:at + MAX_REQUEST_BYTES]
            self._call(CMD_WRITE, offset + at, len(chunk), chunk)

    def flush(self) -> None:
        if self.can_flush:
            self._call(CMD_FLUSH, 0, 0)

    def trim(self, offset: int, length: int) -> None:
        if not self.can_trim:
            raise OSError(host_errno.EOPNOTSUPP, "the NBD server does not trim")
        while length:
            n = min(length, 1 << 30)
            self._call(CMD_TRIM, offset, n)
            offset, length = offset + n, length - n

    def close(self) -> None:
        try:
            if not self.broken:
                self.proto.disconnect()
                self.sock.sendall(self.proto.data_to_send())
        except OSError:
            pass
        self.sock.close()


QEMU_FORMATS = {"qcow2": "qcow2", "qcow": "qcow", "vhd": "vpc", "qed": "qed", "raw": "raw"}


def _die_with_parent() -> None:
    """In the child: SIGTERM when dom0 dies (prctl PR_SET_PDEATHSIG), so no server outlives it."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except Exception:
        pass


class QemuNbd:
    """`qemu-nbd` serving one image on a Unix socket, started and stopped by dom0."""

    def __init__(self, image: str, fmt: str, socket_path: str, readonly: bool, log_path: str,
                 start_timeout: float = 20.0, program: str = "qemu-nbd"):
        if fmt not in QEMU_FORMATS:
            raise OSError(host_errno.EINVAL, f"format {fmt!r} is not served by qemu-nbd")
        self.socket_path = socket_path
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        cmd = [program, f"--socket={socket_path}", f"--format={QEMU_FORMATS[fmt]}", "--persistent",
               "--cache=writeback", "--aio=threads"]
        cmd += ["--read-only"] if readonly else ["--discard=unmap"]
        cmd.append(image)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                preexec_fn=_die_with_parent)
            except OSError as e:
                raise OSError(e.errno, f"cannot start {program}: {e.strerror}") from None
        deadline = time.monotonic() + start_timeout
        while not os.path.exists(socket_path):
            if self.process.poll() is not None:
                raise OSError(host_errno.EIO, f"qemu-nbd could not serve {image}: {self.last_log_line()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OSError(host_errno.ETIMEDOUT, f"qemu-nbd did not start serving {image}")
            time.sleep(0.02)

    def last_log_line(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return lines[-1] if lines else "no message"
        except OSError:
            return "no message"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

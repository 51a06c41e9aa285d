"""The socket hypercall channel, process side: how dom0 and Python guests reach the hypervisor.

Speaks the wire format documented in pvhyp/channel_server.py (the numbers are
repeated here because this side may not import pvhyp; a test checks both
agree). Requests are strictly one at a time per channel (a lock serialises
threads); kicks arrive on a separate event socket, so `fileno()` can sit in
any select loop and `wait_for_event` never competes with a hypercall.

The interface is the one in pvhyp/channel.py: domid, memory, hypercall,
map_foreign, map_machine_frame, wait_for_event; plus the privcmd-like
requests dom0 uses for process domains (create_domain, connect_domain,
destroy_domain, domain_info, readconsole).
"""
from __future__ import annotations

import array
import json
import mmap
import os
import select
import socket
import struct
import threading

from abi.pvhyp_channel import (  # the wire format both ends share
    ALL_DOMAINS,
    CREATE_DOMAIN,
    DOMID_ARG,
    HEADER,
    HELLO,
    HYPERCALL,
    INSPECT,
    MAP_FOREIGN,
    MAP_MACHINE_FRAME,
    MAX_PAYLOAD,
    OP_CONNECT_DOMAIN,
    OP_CREATE_DOMAIN,
    OP_DESTROY_DOMAIN,
    OP_DOMAIN_INFO,
    OP_HELLO,
    OP_HYPERCALL,
    OP_INSPECT,
    OP_MAP_FOREIGN,
    OP_MAP_MACHINE_FRAME,
    OP_READCONSOLE,
    OP_REPLY,
    READCONSOLE,
    READCONSOLE_RESULT,
    RESULT,
)
from abi.x86_pte import PAGE_SHIFT, PAGE_SIZE

MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class ChannelError(Exception):
    """A refused channel request; carries Xen's errno (positive)."""

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno


class ChannelClosed(ChannelError):
    def __init__(self, message: str = "the hypervisor closed the channel"):
        super().__init__(5, message)    # EIO


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise ChannelClosed()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv_frame_with_fds(sock: socket.socket, max_fds: int) -> tuple[int, bytes, list[int]]:
    """One frame whose first bytes carry SCM_RIGHTS fds."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(HEADER.size, socket.CMSG_SPACE(max_fds * fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    if not data:
        raise ChannelClosed()
    data += _recv_exact(sock, HEADER.size - len(data))
    op, _, length = HEADER.unpack(data)
    if length > MAX_PAYLOAD:
        raise ChannelClosed("oversized frame from the hypervisor")
    return op, _recv_exact(sock, length), list(fds)


class SocketChannel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        op, payload, fds = _recv_frame_with_fds(sock, 2)
        if op != OP_HELLO or len(payload) != HELLO.size or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("no greeting from the hypervisor")
        (self.domid, privileged, self.nr_pages, self.first_mfn, self.machine_bytes,
         self.shared_info_mfn, _) = HELLO.unpack(payload)
        self.is_privileged = bool(privileged)
        self._memfd = fds[0]
        self._events = socket.socket(fileno=fds[1])
        self._events.setblocking(False)
        self._own_map = mmap.mmap(self._memfd, self.nr_pages << PAGE_SHIFT,
                                  offset=self.first_mfn << PAGE_SHIFT)
        self.memory = memoryview(self._own_map)
        self.shared_info = self._map_frame(self.shared_info_mfn, True)

    @classmethod
    def from_fd(cls, fd: int) -> "SocketChannel":
        return cls(socket.socket(fileno=fd))

    @classmethod
    def from_env(cls, variable: str = "PVHYP_CHANNEL_FD") -> "SocketChannel":
        return cls.from_fd(int(os.environ[variable]))

    # --- requests ---

    def _request(self, op: int, payload: bytes, want_fds: int = 0) -> tuple[bytes, list[int]]:
        with self._lock:
            self.sock.sendall(HEADER.pack(op, 0, len(payload)) + payload)
            if want_fds:
                reply_op, reply, fds = _recv_frame_with_fds(self.sock, want_fds)
            else:
                reply_op, _, length = HEADER.unpack(_recv_exact(self.sock, HEADER.size))
                if length > MAX_PAYLOAD:
                    raise ChannelClosed("oversized frame from the hypervisor")
                reply, fds = _recv_exact(self.sock, length), []
        if reply_op != op | OP_REPLY or len(reply) < RESULT.size:
            raise ChannelClosed(f"unexpected reply {reply_op:#x} to op {op:#x}")
        return reply, fds

    @staticmethod
    def _check(reply: bytes, what: str) -> int:
        (status,) = RESULT.unpack_from(reply)
        if status < 0:
            raise ChannelError(-status, f"{what}: error {-status}")
        return status

    def hypercall(self, nr: int, *args: int) -> int:
        padded = [a & MASK64 for a in args] + [0] * (6 - len(args))
        reply, _ = self._request(OP_HYPERCALL, HYPERCALL.pack(nr & MASK64, *padded[:6]))
        return RESULT.unpack_from(reply)[0]

    def map_foreign(self, domid: int, pfns, writable: bool = True) -> list[memoryview]:
        pfns = list(pfns)
        payload = MAP_FOREIGN.pack(domid, int(writable), len(pfns)) + struct.pack(f"<{len(pfns)}Q", *pfns)
        reply, _ = self._request(OP_MAP_FOREIGN, payload)
        self._check(reply, f"map_foreign d{domid}")
        mfns = struct.unpack_from(f"<{len(pfns)}Q", reply, RESULT.size)
        return [self._map_frame(mfn, writable) for mfn in mfns]

    def map_machine_frame(self, mfn: int, writable: bool = True) -> memoryview:
        reply, _ = self._request(OP_MAP_MACHINE_FRAME, MAP_MACHINE_FRAME.pack(mfn, int(writable)))
        self._check(reply, f"map mfn {mfn:#x}")
        return self._map_frame(mfn, writable)

    def _map_frame(self, mfn: int, writable: bool) -> memoryview:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        m = mmap.mmap(self._memfd, PAGE_SIZE, mmap.MAP_SHARED, prot, offset=mfn << PAGE_SHIFT)
        view = memoryview(m)
        return view if writable else view.toreadonly()

    # --- privcmd-like requests (dom0) ---

    def readconsole(self, domid: int, offset: int = 0, max_bytes: int = 65536) -> tuple[bytes, int]:
        """console_io output of `domid` from absolute `offset`: (data, next offset)."""
        reply, _ = self._request(OP_READCONSOLE, READCONSOLE.pack(domid, 0, max_bytes, offset))
        self._check(reply, f"readconsole d{domid}")      # a refusal carries only the status
        length, next_offset = READCONSOLE_RESULT.unpack_from(reply)
        return reply[READCONSOLE_RESULT.size:READCONSOLE_RESULT.size + length], next_offset

    def create_domain(self, nr_pages: int, max_vcpus: int = 1) -> int:
        reply, _ = self._request(OP_CREATE_DOMAIN, CREATE_DOMAIN.pack(nr_pages, max_vcpus))
        return self._check(reply, "create_domain")

    def connect_domain(self, domid: int) -> socket.socket:
        """The channel socket for process domain `domid`, to hand to its process."""
        reply, fds = self._request(OP_CONNECT_DOMAIN, DOMID_ARG.pack(domid), want_fds=1)
        try:
            self._check(reply, f"connect d{domid}")
        except ChannelError:
            for fd in fds:
                os.close(fd)
            raise
        if len(fds) != 1:
            raise ChannelClosed("connect_domain reply without its socket")
        return socket.socket(fileno=fds[0])

    def destroy_domain(self, domid: int) -> None:
        reply, _ = self._request(OP_DESTROY_DOMAIN, DOMID_ARG.pack(domid))
        self._check(reply, f"destroy d{domid}")

    def domain_info(self, domid: int | None = None) -> dict:
        """{"domains": [one dict per domain], "host": {total_pages, free_pages, nr_domains}}."""
        reply, _ = self._request(OP_DOMAIN_INFO, DOMID_ARG.pack(ALL_DOMAINS if domid is None else domid))
        self._check(reply, "domain_info")
        return json.loads(reply[RESULT.size:])

    def inspect(self, domid: int, view: str, va: int = 0, vcpu: int = 0, verbose: bool = False) -> dict:
        """One of the hypervisor's live views of `domid` (pvhyp/introspect.py), as plain data.
        A refusal or a view it cannot answer is ChannelError with Xen's errno."""
        name = view.encode("ascii", "replace")[:16]
        reply, _ = self._request(OP_INSPECT, INSPECT.pack(domid, vcpu, int(verbose), name, va & MASK64))
        self._check(reply, f"inspect d{domid} {view[:40]}")
        return json.loads(reply[RESULT.size:])

    # --- events ---

    def fileno(self) -> int:
        """Readable when the hypervisor kicked this domain (select on it, then `drain_events`)."""
        return self._events.fileno()

    def drain_events(self) -> bool:
        fired = False
        while True:
            try:
                data = self._events.recv(4096)
            except (BlockingIOError, InterruptedError):
                return fired
            if not data:
                raise ChannelClosed()
            fired = True

    def wait_for_event(self, timeout: float | None = None) -> bool:
        if self.drain_events():
            return True
        readable, _, _ = select.select([self._events], [], [], timeout)
        return bool(readable) and self.drain_events()

    def close(self) -> None:
        for closer in (self.sock.close, self._events.close, lambda: os.close(self._memfd)):
            try:
                closer()
            except OSError:
                pass

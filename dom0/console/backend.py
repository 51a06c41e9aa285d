"""Console backend: each guest's xencons_interface ring, served to a pty and an append-only log.

As xenconsoled: the guest's output ring is drained into the log file
(DIR/console/guest-NAME.log) and the pty; bytes typed on the pty go into the
input ring. The ring page is the guest's to scribble on: indexes are checked
on every pass (pvguest.ring), and a ring with impossible indexes is skipped,
as xenconsoled skips it, without touching any other domain's console. When
nobody has the pty open its buffer fills and further output only reaches
the log (dom0 holds the slave end open so the master never reports EIO).
"""
from __future__ import annotations

import logging
import os
import termios
import time
import tty

from dom0.rundir import open_log
from pvguest.console import console_rings
from pvguest.ring import RingError

log = logging.getLogger("dom0.console")
MAX_PENDING_INPUT = 4096
# A guest may print forever; its log may not fill dom0's disk. Past this the ring is
# still drained (the guest never stalls) but only the pty sees the output.
MAX_LOG_BYTES = 16 << 20


class ConsoleSession:
    def __init__(self, domid: int, name: str, page: memoryview, notify, log_path: str):
        self.domid = domid
        self.name = name
        self.into_guest, self.from_guest = console_rings(page)
        self.notify = notify
        self.log = open(open_log(log_path), "ab", buffering=0)
        self.log_path = log_path
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.tty = os.ttyname(self.slave)
        self.pending_input = b""
        self.ring_broken = False
        self.bytes_out = 0

    def service(self) -> None:
        """Move output to the log and pty, pending input into the ring."""
        try:
            data = self.from_guest.read()
            moved = bool(data)
            if self.pending_input:
                n = self.into_guest.write(self.pending_input)
                self.pending_input = self.pending_input[n:]
                moved = moved or n > 0
        except RingError as e:
            if not self.ring_broken:
                self.ring_broken = True
                log.warning("d%d console ring: %s (skipped until it makes sense again)", self.domid, e)
                self.log.write(f"\n[pvhyp: console ring of d{self.domid} is corrupt: {e}]\n".encode())
            return
        self.ring_broken = False
        if data:
            if self.bytes_out < MAX_LOG_BYTES <= self.bytes_out + len(data):
                self.log.write(f"\n[pvhyp: log of {self.name} reached {MAX_LOG_BYTES} bytes; "
                               f"further output goes to the pty only]\n".encode())
            elif self.bytes_out < MAX_LOG_BYTES:
                self.log.write(data)
            self.bytes_out += len(data)
            try:
                os.write(self.master, data)
            except (BlockingIOError, OSError):
                pass        # nobody reading the pty: the log still has it
        if moved:
            self.notify()

    def on_pty_input(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        self.pending_input = (self.pending_input + data)[-MAX_PENDING_INPUT:]
        self.service()

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


class ConsoleBackend:
    def __init__(self, log_dir: str, add_reader, remove_reader):
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.add_reader = add_reader
        self.remove_reader = remove_reader
        self.sessions: dict[int, ConsoleSession] = {}

    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, f"guest-{name}.log")

    def add_domain(self, domid: int, name: str, page: memoryview, notify) -> ConsoleSession:
        self.remove_domain(domid)
        session = ConsoleSession(domid, name, page, notify, self.log_path(name))
        session.log.write(f"[pvhyp: console of {name} (d{domid}) opened "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}]\n".encode())
        self.sessions[domid] = session
        self.add_reader(session.master, session.on_pty_input)
        return session

    def remove_domain(self, domid: int) -> None:
        session = self.sessions.pop(domid, None)
        if session is None:
            return
        session.service()
        self.remove_reader(session.master)
        session.close()

    def kick(self, domid: int) -> None:
        session = self.sessions.get(domid)
        if session is not None:
            session.service()

    def service_all(self) -> None:
        for session in list(self.sessions.values()):
            session.service()


class HypervisorLog:
    """DIR/console/hypervisor.log: every domain's console_io output as it appears (xenconsoled --log=hv).

    Lines carry Xen's "(dN) " prefix for guests; offsets are kept per domain
    so each byte is logged once, and a domain's buffer that wrapped past
    unread bytes is noted rather than silently skipped.
    """

    def __init__(self, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, "hypervisor.log")
        self.file = open(open_log(self.path), "ab", buffering=0)
        self.offsets: dict[int, int] = {}
        self.partial: dict[int, bytes] = {}

    def poll(self, channel, domids) -> None:
        for domid in domids:
            offset = self.offsets.get(domid, 0)
            data, next_offset = channel.readconsole(domid, offset)
            if next_offset - len(data) > offset:
                self.file.write(f"[pvhyp: d{domid} console_io output lost "
                                f"({next_offset - len(data) - offset} bytes)]\n".encode())
            self.offsets[domid] = next_offset
            if data:
                self._write(domid, self.partial.pop(domid, b"") + data)
        for gone in set(self.offsets) - set(domids):
            self.offsets.pop(gone)
            rest = self.partial.pop(gone, b"")
            if rest:
                self._write(gone, rest + b"\n")

    def _write(self, domid: int, data: bytes) -> None:
        *lines, rest = data.split(b"\n")
        if rest:
            self.partial[domid] = rest
        prefix = b"" if domid == 0 else f"(d{domid}) ".encode()
        self.file.write(b"".join(prefix + line + b"\n" for line in lines))

    def close(self) -> None:
        self.file.close()

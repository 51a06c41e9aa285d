"""Console backend: each guest's xencons_interface ring, served to a pty and an append-only log.

As xenconsoled: the guest's output ring is drained into the log file
(DIR/console/guest-NAME.log) and the pty; bytes typed on the pty go into the
input ring. The ring page is the guest's to scribble on: indexes are checked
on every pass (pvguest.ring), and a ring with impossible indexes is skipped,
as xenconsoled skips it, without touching any other domain's console. When
nobody has the pty open its buffer fills and further output only reaches
the log (dom0 holds the slave end open so the master never reports EIO):
writes to the pty never block dom0's loop, and what the pty could not take is
counted and announced there ("[pvhyp: N bytes dropped ...]") once it takes
bytes again. Logs are bounded per file, across a guest's reboots
(dom0.console.bounded), and so are hypervisor.log and its unfinished lines.
"""
from __future__ import annotations

import logging
import os
import termios
import time
import tty

from dom0.console.bounded import CappedLog, LineAssembler
from pvguest.console import console_rings
from pvguest.ring import RingError

log = logging.getLogger("dom0.console")
MAX_PENDING_INPUT = 4096
# A guest may print forever; its log may not fill dom0's disk. Past this the ring is
# still drained (the guest never stalls) but only the pty sees the output.
MAX_LOG_BYTES = 16 << 20
MAX_HYPERVISOR_LOG_BYTES = 16 << 20     # hypervisor.log: every domain's console_io, one file
MAX_CORRUPTION_REPORTS = 8              # per console session, in dom0.log (its log notes are bounded)


class ConsoleSession:
    def __init__(self, domid: int, name: str, page: memoryview, notify, log_path: str):
        self.domid = domid
        self.name = name
        self.into_guest, self.from_guest = console_rings(page)
        self.notify = notify
        self.log = CappedLog(log_path, MAX_LOG_BYTES, f"the log of {name}")
        self.log_path = log_path
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.tty = os.ttyname(self.slave)
        self.pending_input = b""
        self.ring_broken = False
        self.bytes_out = 0
        self.pty_dropped = 0        # output the pty had no room for since it last took some
        self.corruptions = 0

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
                # a guest may break and mend its ring forever: dom0.log hears of the first few times
                self.corruptions += 1
                if self.corruptions <= MAX_CORRUPTION_REPORTS:
                    more = "; no more reports of it" if self.corruptions == MAX_CORRUPTION_REPORTS else ""
                    log.warning("d%d console ring: %s (skipped until it makes sense again%s)",
                                self.domid, e, more)
                self.log.note(f"\n[pvhyp: console ring of d{self.domid} is corrupt: {e}]\n")
            return
        self.ring_broken = False
        if data:
            self.log.write(data)
            self.bytes_out += len(data)
            self._to_pty(data)
        if moved:
            self.notify()

    def _to_pty(self, data: bytes) -> None:
        """Non-blocking: what the pty has no room for is dropped and counted; the count goes
        first the next time it takes bytes (if that note only partly fits, it is sent again)."""
        note = (f"\r\n[pvhyp: {self.pty_dropped} bytes dropped: nobody read this console]\r\n".encode()
                if self.pty_dropped else b"")
        try:
            written = os.write(self.master, note + data)
        except OSError:             # BlockingIOError: full; anything else: no pty to speak of
            written = 0
        if written < len(note):
            self.pty_dropped += len(data)
            return
        self.pty_dropped = len(data) - (written - len(note))

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
        session.log.note(f"[pvhyp: console of {name} (d{domid}) opened {time.strftime('%Y-%m-%d %H:%M:%S')}]\n")
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
    unread bytes is noted rather than silently skipped. A line is written
    when it ends, or when it reaches MAX_LINE_BYTES (a guest that never
    writes a newline cannot grow dom0); the file is capped as a guest log is.
    """

    def __init__(self, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, "hypervisor.log")
        self.file = CappedLog(self.path, MAX_HYPERVISOR_LOG_BYTES, "hypervisor.log")
        self.offsets: dict[int, int] = {}
        self.lines: dict[int, LineAssembler] = {}

    def poll(self, channel, domids) -> None:
        for domid in domids:
            offset = self.offsets.get(domid, 0)
            data, next_offset = channel.readconsole(domid, offset)
            if next_offset - len(data) > offset:
                self.file.note(f"[pvhyp: d{domid} console_io output lost "
                               f"({next_offset - len(data) - offset} bytes)]\n")
            self.offsets[domid] = next_offset
            if data:
                self._write(domid, self.lines.setdefault(domid, LineAssembler()).feed(data))
        for gone in set(self.offsets) - set(domids):
            self.offsets.pop(gone)
            rest = self.lines.pop(gone, LineAssembler()).flush()
            if rest:
                self._write(gone, [rest])

    def _write(self, domid: int, lines: list[bytes]) -> None:
        prefix = b"" if domid == 0 else f"(d{domid}) ".encode()
        if lines:
            self.file.write(b"".join(prefix + line + b"\n" for line in lines))

    def close(self) -> None:
        self.file.close()

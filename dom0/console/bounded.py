"""Bounded homes for what guests print: every log and buffer of console output has a size it never
passes, and says once that it dropped output rather than growing (a guest may print forever).

- CappedLog: an append-only log file whose guest output stops at `cap` bytes, across every
  session that opens it (a guest that reboots reopens its log: the cap is per file, i.e. per
  guest name, not per boot). pvhyp's own notes (session opened, shut down, N bytes dropped)
  have a further MARKER_RESERVE, so the file never passes cap + MARKER_RESERVE.
- LineAssembler: whole lines out of a byte stream; a partial line that reaches `max_line` is
  let out as a line of its own (as Xen's console flushes a domain's full line buffer), so a
  guest that never writes a newline holds at most `max_line` bytes.
- TailBuffer: the last `limit` bytes of a stream in memory, and how many came before them.
- CappedStreamHandler: a process's own logging (hostd.log, dom0.log, where guests' misdeeds are
  reported) stops at MAX_PROCESS_LOG_BYTES per process, with one note.

Used by the console backend (guest logs, hypervisor.log) and by `pvhyp run` (what it keeps of
the rings and prints of console_io).
"""
from __future__ import annotations

import logging
import os

from dom0.rundir import open_log

MARKER_RESERVE = 64 << 10
MAX_LINE_BYTES = 4096
MAX_PROCESS_LOG_BYTES = 16 << 20


class CappedLog:
    def __init__(self, path: str, cap: int, what: str):
        self.path = path
        self.cap = cap
        self.what = what                    # how notes name it ("log of NAME")
        self.fd = open_log(path)
        self.size = os.fstat(self.fd).st_size
        # A file already past its cap was filled by an earlier session, which said so there.
        self.full_noted = self.size > cap
        self.dropped = 0                    # guest bytes this session could not keep

    def write(self, data: bytes) -> None:
        """Guest output: kept while the file is under its cap, counted once it is not."""
        room = max(0, self.cap - self.size)
        if room:
            self._append(data[:room])
        if len(data) > room:
            self.dropped += len(data) - room
            if not self.full_noted:
                self.full_noted = True
                self.note(f"\n[pvhyp: {self.what} reached {self.cap} bytes; further output is dropped "
                          f"here (the console pty still gets it)]\n")

    def note(self, text: str) -> None:
        """A line of pvhyp's own, kept while the file is under cap + MARKER_RESERVE."""
        line = text.encode(errors="replace")
        if self.size + len(line) <= self.cap + MARKER_RESERVE:
            self._append(line)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError:
                return      # a full disk loses log lines, never the guest
            self.size += n
            view = view[n:]

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.dropped:
            self.note(f"[pvhyp: {self.dropped} bytes of output dropped from {self.what}]\n")
        os.close(self.fd)
        self.fd = -1


class LineAssembler:
    def __init__(self, max_line: int = MAX_LINE_BYTES):
        self.max_line = max_line
        self.partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes (without their newline); the rest waits, at most max_line bytes."""
        *lines, rest = (self.partial + data).split(b"\n")
        while len(rest) >= self.max_line:
            lines.append(rest[:self.max_line])
            rest = rest[self.max_line:]
        self.partial = rest
        return lines

    def flush(self) -> bytes:
        """What waits (an unfinished line), handed over and forgotten."""
        rest, self.partial = self.partial, b""
        return rest


class TailBuffer:
    def __init__(self, limit: int):
        self.limit = limit
        self._buf = bytearray()
        self.dropped = 0

    def append(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self.limit
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def __contains__(self, needle: bytes) -> bool:
        return needle in self._buf

    def __bytes__(self) -> bytes:
        return self.getvalue()

    def getvalue(self) -> bytes:
        """The tail, after a note of what was dropped before it (once, at its head)."""
        head = f"[pvhyp: {self.dropped} bytes dropped before this]\n".encode() if self.dropped else b""
        return head + bytes(self._buf)


class CappedStreamHandler(logging.StreamHandler):
    def __init__(self, stream, cap: int = MAX_PROCESS_LOG_BYTES):
        super().__init__(stream)
        self.cap = cap
        self.written = 0
        self.dropped = 0            # messages not written once the cap was reached

    def emit(self, record: logging.LogRecord) -> None:
        if self.written >= self.cap:
            self.dropped += 1
            return
        try:
            text = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self.written + len(text) > self.cap:
            text = f"[pvhyp: this log reached {self.cap} bytes; further messages are dropped]\n"
            self.written = self.cap
            self.dropped += 1
        else:
            self.written += len(text)
        try:
            self.stream.write(text)
            self.flush()
        except Exception:
            self.handleError(record)

"""The trace spool: the one file the hypervisor and dom0 both append trace records to.

`pvhyp run/up --trace FILE` has two processes with something to say: the
hypervisor (hypercalls, traps, events, grant maps, vCPU runs) and dom0 (its
backends' work: blkback requests, netback packets, xenstored requests).
Both append JSON lines to one file opened with O_APPEND, each write holding
whole lines only, so the kernel never interleaves two writers inside a line;
pvhyp/timeline turns the file into a Chrome trace-event JSON afterwards.

Why here: the file format is a boundary two processes share, and dom0 may
import abi but never pvhyp.

A line is one record: a JSON object with `t` (seconds since the hypervisor's
trace start on CLOCK_MONOTONIC, which both processes read), `kind`, `dom`,
`vcpu` (-1: not a vCPU's), and the kind's fields; a slice adds `dur`
(seconds). The first line is the header (`kind` = HEADER_KIND). Records of
dom0's own work carry `track` (the thread of dom0 it is drawn on).

Bounded: a writer stops at `limit` bytes of file (both writers look at the
file's size, so the cap holds for the sum) and appends one TRUNCATED_KIND
record saying so.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

FORMAT = "pvhyp-trace/1"
HEADER_KIND = "trace_start"
TRUNCATED_KIND = "trace_truncated"
FLUSH_BYTES = 64 * 1024         # one write() per this much: whole lines, few syscalls
DEFAULT_LIMIT = 256 << 20       # bytes of spool before the writers stop


class SpoolWriter:
    """Appends records to a spool file descriptor (O_APPEND), in whole-line writes, up to a limit."""

    def __init__(self, fd: int, limit: int = DEFAULT_LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self.full = False
        self.dropped = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: str, start: float, limit: int = DEFAULT_LIMIT, origin: str = "hypervisor") -> SpoolWriter:
        """A new spool at `path` (truncated), its header written: `start` is t = 0 on CLOCK_MONOTONIC."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        writer = cls(fd, limit)
        writer.write({"t": 0.0, "kind": HEADER_KIND, "dom": -1, "vcpu": -1, "format": FORMAT,
                      "monotonic_start": start, "origin": origin})
        writer.flush()
        return writer

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self.full:
                self.dropped += 1
                return
            self._pending.append(line)
            self._pending_bytes += len(line)
            if self._pending_bytes >= FLUSH_BYTES:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending or self.full:
            return
        lines = self._pending
        self._pending = []
        self._pending_bytes = 0
        try:
            room = self.limit - os.fstat(self.fd).st_size
            data = b"".join(lines)
            if len(data) > room:        # the lines that fit, then the note that the rest is gone
                kept = 0
                for count, line in enumerate(lines):
                    if kept + len(line) > room:
                        self.dropped += len(lines) - count
                        break
                    kept += len(line)
                self.full = True
                note = {"t": None, "kind": TRUNCATED_KIND, "dom": -1, "vcpu": -1, "limit": self.limit}
                data = data[:kept] + (json.dumps(note) + "\n").encode()
            os.write(self.fd, data)
        except OSError:
            self.full = True        # disk full or closed: the run goes on without its trace

    def close(self) -> None:
        self.flush()
        try:
            os.close(self.fd)
        except OSError:
            pass


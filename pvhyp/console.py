"""Per-domain console_io output: what CONSOLEIO_write leaves behind for dom0 and `pvhyp run`.

Xen prints a domU's CONSOLEIO_write text, line by line with a "(dN) " prefix,
to its own console ring; pvhyp keeps each domain's text apart instead, in a
bounded buffer addressed by absolute byte offsets, so dom0 can page through
it (`pvhyp dmesg`) and `pvhyp run` can print it live (hv.console_sinks).
"""
from __future__ import annotations

import threading

BUFFER_BYTES = 64 << 10


class DomainConsole:
    def __init__(self, domid: int, capacity: int = BUFFER_BYTES):
        self.domid = domid
        self.capacity = capacity
        self._buf = bytearray()
        self._start = 0         # absolute offset of _buf[0]; older bytes were dropped
        self._lock = threading.Lock()

    @property
    def end(self) -> int:
        return self._start + len(self._buf)

    def append(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            excess = len(self._buf) - self.capacity
            if excess > 0:
                del self._buf[:excess]
                self._start += excess

    def read(self, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Bytes from absolute `offset` (clamped to what is still kept) and the offset after them."""
        with self._lock:
            offset = min(max(offset, self._start), self.end)
            lo = offset - self._start
            data = bytes(self._buf[lo:lo + max(0, max_bytes)])
            return data, offset + len(data)


def attach(hv) -> None:
    # Live listeners: fn(domid, data) for every CONSOLEIO_write (`pvhyp run` prints them).
    hv.console_sinks = []
    hv.domain_create_hooks.append(domain_created)


def domain_created(domain) -> None:
    domain.console = DomainConsole(domain.domid)


def console_write(hv, domain, data: bytes) -> None:
    domain.console.append(data)
    for sink in list(hv.console_sinks):
        sink(domain.domid, data)

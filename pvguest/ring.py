"""Byte rings in a shared page (xenstore and console): free-running u32 indexes, masked on use.

Both ends of every byte ring (the guest's xenbus and console frontends, dom0's
xenstored and console backend) use this one mechanism; `xenstore_rings` cuts
the xenstore page into its two rings, pvguest.console's `console_rings` the
console page. The other side may write anything into the page at any moment,
so each index is read once per operation and `prod - cons` is checked against
the ring size before any byte moves; an impossible pair raises RingError and
moves nothing.
"""
from __future__ import annotations

import struct

from abi.io import xs_wire as w

_U32 = struct.Struct("<I")
MASK32 = 0xFFFF_FFFF


class RingError(Exception):
    """The peer left indexes no honest peer could produce."""


class ByteRing:
    def __init__(self, page: memoryview, data_offset: int, size: int, cons_offset: int,
                 prod_offset: int):
        if size & (size - 1):
            raise ValueError("ring size must be a power of two")
        self.page = page
        self.data_offset = data_offset
        self.size = size
        self.cons_offset = cons_offset
        self.prod_offset = prod_offset

    def _indexes(self) -> tuple[int, int]:
        cons = _U32.unpack_from(self.page, self.cons_offset)[0]
        prod = _U32.unpack_from(self.page, self.prod_offset)[0]
        if (prod - cons) & MASK32 > self.size:
            raise RingError(f"ring indexes cons={cons:#x} prod={prod:#x} exceed size {self.size}")
        return cons, prod

    def available(self) -> int:
        cons, prod = self._indexes()
        return (prod - cons) & MASK32

    def space(self) -> int:
        return self.size - self.available()

    def write(self, data: bytes) -> int:
        """Producer side: copy as much of `data` as fits; returns the count."""
        cons, prod = self._indexes()
        n = min(len(data), self.size - ((prod - cons) & MASK32))
        offset = prod & (self.size - 1)
        first = min(n, self.size - offset)
        base = self.data_offset
        self.page[base + offset:base + offset + first] = data[:first]
        self.page[base:base + n - first] = data[first:n]
        _U32.pack_into(self.page, self.prod_offset, (prod + n) & MASK32)
        return n

    def read(self, max_bytes: int | None = None) -> bytes:
        """Consumer side: take up to `max_bytes` (default: all) waiting bytes."""
        cons, prod = self._indexes()
        n = (prod - cons) & MASK32
        if max_bytes is not None:
            n = min(n, max_bytes)
        offset = cons & (self.size - 1)
        first = min(n, self.size - offset)
        base = self.data_offset
        data = bytes(self.page[base + offset:base + offset + first]) + bytes(self.page[base:base + n - first])
        _U32.pack_into(self.page, self.cons_offset, (cons + n) & MASK32)
        return data


def xenstore_rings(page: memoryview) -> tuple[ByteRing, ByteRing]:
    """(requests, responses) of a struct xenstore_domain_interface."""
    req = ByteRing(page, w.XENSTORE_REQ_OFFSET, w.XENSTORE_RING_SIZE,
                   w.XENSTORE_REQ_CONS_OFFSET, w.XENSTORE_REQ_PROD_OFFSET)
    rsp = ByteRing(page, w.XENSTORE_RSP_OFFSET, w.XENSTORE_RING_SIZE,
                   w.XENSTORE_RSP_CONS_OFFSET, w.XENSTORE_RSP_PROD_OFFSET)
    return req, rsp

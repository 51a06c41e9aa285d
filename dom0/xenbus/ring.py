"""The backend's end of a request/response ring spread over granted pages.

io/ring.h's ring lives in 1, 2, 4 ... pages (`ring-page-order`), each
granted separately and so mapped separately in dom0: entries run across
page boundaries, which is why this is not abi.io.ring.BackRing (one
contiguous buffer).  The index arithmetic is abi.io.ring's.

The frontend may write anything at any time, so: `req_prod` is read once
per batch and checked (RING_REQUEST_PROD_OVERFLOW: more requests than the
ring holds is a broken frontend: `RingOverflow`); each request is copied out
before it is looked at (RING_COPY_REQUEST), so it cannot change under the
backend; a request is taken only while its slot's response would not
overwrite a response the frontend has not consumed yet.
"""
from __future__ import annotations

import struct

from abi.io import ring as R
from abi.x86_pte import PAGE_SIZE

_U32 = struct.Struct("<I")


class RingOverflow(Exception):
    """The frontend's req_prod is more than a ring ahead of our responses."""


class PagedBuffer:
    """Bytes laid across a list of page views, read and written as one range."""

    def __init__(self, pages: list[memoryview]):
        self.pages = pages
        self.size = len(pages) * PAGE_SIZE

    def read(self, offset: int, n: int) -> bytes:
        page, at = divmod(offset, PAGE_SIZE)
        if at + n <= PAGE_SIZE:
            return bytes(self.pages[page][at:at + n])
        first = PAGE_SIZE - at
        return bytes(self.pages[page][at:]) + self.read(offset + first, n - first)

    def write(self, offset: int, data: bytes) -> None:
        page, at = divmod(offset, PAGE_SIZE)
        if at + len(data) <= PAGE_SIZE:
            self.pages[page][at:at + len(data)] = data
            return
        first = PAGE_SIZE - at
        self.pages[page][at:] = data[:first]
        self.write(offset + first, data[first:])


class BackRingPages:
    """struct <name>_back_ring over granted pages; `entry_size` from the protocol's sring_entry."""

    def __init__(self, pages: list[memoryview], entry_size: int, start: int = 0):
        self.buffer = PagedBuffer(pages)
        self.header = pages[0]
        self.entry_size = entry_size
        self.nr_ents = R.ring_size(entry_size, self.buffer.size)
        self.req_cons = start
        self.rsp_prod_pvt = start

    def _get(self, offset: int) -> int:
        value: int = _U32.unpack_from(self.header, offset)[0]
        return value

    def _set(self, offset: int, value: int) -> None:
        _U32.pack_into(self.header, offset, value & 0xFFFFFFFF)

    def _offset(self, idx: int) -> int:
        return R.SRING_HEADER_SIZE + (idx & (self.nr_ents - 1)) * self.entry_size

    def take_requests(self, limit: int) -> list[bytes]:
        """Copies of up to `limit` waiting requests; raises RingOverflow for an impossible req_prod."""
        prod = self._get(R.REQ_PROD_OFFSET)
        if R.idx_diff(prod, self.rsp_prod_pvt) > self.nr_ents:
            raise RingOverflow(f"req_prod {prod:#x} is more than {self.nr_ents} requests past "
                               f"our responses ({self.rsp_prod_pvt:#x})")
        taken: list[bytes] = []
        while self.req_cons != prod and len(taken) < limit:
            if R.idx_diff(self.req_cons, self.rsp_prod_pvt) >= self.nr_ents:
                break       # RING_REQUEST_CONS_OVERFLOW: wait until the frontend takes responses
            taken.append(self.buffer.read(self._offset(self.req_cons), self.entry_size))
            self.req_cons = (self.req_cons + 1) & 0xFFFFFFFF
        return taken

    def put_response(self, data: bytes) -> None:
        self.buffer.write(self._offset(self.rsp_prod_pvt), data)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & 0xFFFFFFFF

    def push_responses(self) -> bool:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish; True when the frontend wants a kick."""
        old, new = self._get(R.RSP_PROD_OFFSET), self.rsp_prod_pvt
        self._set(R.RSP_PROD_OFFSET, new)
        return R.notify_needed(new, old, self._get(R.RSP_EVENT_OFFSET))

    def more_requests(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: ask to be kicked for the next one, then look again."""
        if self._get(R.REQ_PROD_OFFSET) != self.req_cons:
            return True
        self._set(R.REQ_EVENT_OFFSET, self.req_cons + 1)
        return self._get(R.REQ_PROD_OFFSET) != self.req_cons

    def pending(self) -> bool:
        """Requests published and not taken (cheap: for the periodic pass)."""
        return self._get(R.REQ_PROD_OFFSET) != self.req_cons

"""xen/include/public/io/ring.h: the shared request/response ring of split drivers.

One shared page: a 64-byte header of free-running 32-bit indexes, then an
array of entries, each a union of one request and one response.  The
frontend produces requests and consumes responses; the backend the reverse.
Indexes only grow (mod 2**32); an index is turned into a slot with
``idx & (RING_SIZE - 1)``, so the number of entries is a power of two.

The header's ``req_event`` / ``rsp_event`` hold notification off: a producer
notifies its peer only when the batch it just published crosses the index
the peer asked to be woken at.

C's DEFINE_RING_TYPES(name, req, rsp) becomes ``DEFINE_RING_TYPES(req, rsp)``,
returning the entry union and the ``sring`` struct (header + ``ring[1]``, as in
C).  The index arithmetic of the macros is here as plain functions and the
``FrontRing`` / ``BackRing`` classes, working on a writable buffer (e.g. a
memoryview of the guest's ring page).  C's memory barriers have no
counterpart: pvhyp runs the guest and backend in one thread, so every store
here is seen in program order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from construct import Struct

from abi.cdefs import CUnion, Typedef, uint8_t, uint32_t

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

RING_IDX = Typedef("RING_IDX", uint32_t)


def _wrap(idx: int) -> int:
    """An index as the 32-bit RING_IDX it is stored as."""
    return idx & 0xFFFFFFFF

# The header every <name>_sring starts with (a pvhyp name: C repeats these
# fields inside each generated struct, e.g. struct blkif_sring).
sring_header = Struct(
    "req_prod" / RING_IDX * "frontend: requests published so far",
    "req_event" / RING_IDX * "backend: notify me when req_prod passes this",
    "rsp_prod" / RING_IDX * "backend: responses published so far",
    "rsp_event" / RING_IDX * "frontend: notify me when rsp_prod passes this",
    "pvt" / CUnion(
        "netif" / Struct("smartpoll_active" / uint8_t),
        "tapif_user" / Struct("msg" / uint8_t),
        "pvt_pad" / uint8_t[4],
    ) * "protocol-private flags",
    "__pad" / uint8_t[44],
)
sring_header.docs = "First 64 bytes of every shared ring page."

# Ring protocols count in 4 KiB pages whatever the guest's own page size.
XEN_PAGE_SHIFT = 12

SRING_HEADER_SIZE = 64
REQ_PROD_OFFSET = 0
REQ_EVENT_OFFSET = 4
RSP_PROD_OFFSET = 8
RSP_EVENT_OFFSET = 12

# For the registry: what here has no twin in ring.h, and why.
NOT_IN_HEADER = {
    "sring_header": "C repeats the header inside each DEFINE_RING_TYPES struct; "
    "checked there (blkif_sring, netif_tx_sring, ...)",
    **{name: "pvhyp's byte offset/size in the ring header, from sring_header"
       for name in ("SRING_HEADER_SIZE", "REQ_PROD_OFFSET", "REQ_EVENT_OFFSET",
                    "RSP_PROD_OFFSET", "RSP_EVENT_OFFSET")},
}


def DEFINE_RING_TYPES(request: Struct, response: Struct) -> tuple[CUnion, Struct]:
    """(<name>_sring_entry union, <name>_sring struct) for one protocol."""
    entry = CUnion("req" / request, "rsp" / response)
    entry.docs = "One ring slot: a request (front to back) or its response (back to front)."
    sring = Struct(
        *sring_header.subcons,
        "ring" / entry[1] * "variable length: RING_SIZE entries fill the page",
    )
    sring.docs = "The shared ring page (C declares one entry; the page holds __RING_SIZE)."
    return entry, sring


def round_down_power_of_two(n: int) -> int:
    """__RD32: the largest power of two <= n (0 for 0)."""
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def ring_size(entry_size: int, ring_bytes: int = 4096) -> int:
    """__RING_SIZE: entries of ``entry_size`` bytes that fit after the header,
    rounded down to a power of two."""
    return round_down_power_of_two((ring_bytes - SRING_HEADER_SIZE) // entry_size)


__RING_SIZE = ring_size  # Xen's name (unusable inside a class body: name mangling)


@dataclass(frozen=True)
class RingLayout:
    """Where things are in a ring page for one request/response pair."""

    entry_size: int
    nr_ents: int
    ring_bytes: int

    @classmethod
    def of(cls, request: Struct, response: Struct, ring_bytes: int = 4096) -> "RingLayout":
        entry_size = CUnion("req" / request, "rsp" / response).size
        return cls(entry_size, ring_size(entry_size, ring_bytes), ring_bytes)

    def slot(self, idx: int) -> int:
        return idx & (self.nr_ents - 1)

    def entry_offset(self, idx: int) -> int:
        """Byte offset in the page of the entry for free-running index ``idx``."""
        return SRING_HEADER_SIZE + self.slot(idx) * self.entry_size


# --- the macros' arithmetic, as pure functions --------------------------------------
def idx_diff(a: int, b: int) -> int:
    """(RING_IDX)(a - b): distance between free-running indexes."""
    return _wrap(a - b)


def notify_needed(new: int, old: int, event: int) -> bool:
    """The check in RING_PUSH_*_AND_CHECK_NOTIFY: did publishing old..new pass event?"""
    return idx_diff(new, event) < idx_diff(new, old)


def nr_unconsumed_requests(req_prod: int, req_cons: int, rsp_prod_pvt: int, nr_ents: int) -> int:
    """XEN_RING_NR_UNCONSUMED_REQUESTS: never more than the ring could hold."""
    return min(idx_diff(req_prod, req_cons), nr_ents - idx_diff(req_cons, rsp_prod_pvt))


class SharedRing:
    """The shared page's header fields, read and written in place."""

    _u32 = struct.Struct("<I")

    def __init__(self, page: WriteableBuffer, layout: RingLayout) -> None:
        self.page = memoryview(page).cast("B")
        self.layout = layout

    def _get(self, offset: int) -> int:
        value: int = self._u32.unpack_from(self.page, offset)[0]
        return value

    def _set(self, offset: int, value: int) -> None:
        self._u32.pack_into(self.page, offset, _wrap(value))

    req_prod = property(lambda s: s._get(REQ_PROD_OFFSET), lambda s, v: s._set(REQ_PROD_OFFSET, v))
    req_event = property(lambda s: s._get(REQ_EVENT_OFFSET), lambda s, v: s._set(REQ_EVENT_OFFSET, v))
    rsp_prod = property(lambda s: s._get(RSP_PROD_OFFSET), lambda s, v: s._set(RSP_PROD_OFFSET, v))
    rsp_event = property(lambda s: s._get(RSP_EVENT_OFFSET), lambda s, v: s._set(RSP_EVENT_OFFSET, v))

    def init(self) -> None:
        """SHARED_RING_INIT: empty ring, both sides want the first message."""
        self.req_prod = self.rsp_prod = 0
        self.req_event = self.rsp_event = 1
        self.page[16:SRING_HEADER_SIZE] = bytes(SRING_HEADER_SIZE - 16)

    def entry(self, idx: int) -> memoryview:
        """The slot for free-running index ``idx`` (RING_GET_REQUEST/RESPONSE)."""
        start = self.layout.entry_offset(idx)
        return self.page[start:start + self.layout.entry_size]


class FrontRing:
    """The frontend's private indexes (struct <name>_front_ring)."""

    def __init__(self, sring: SharedRing, start: int = 0):
        # FRONT_RING_ATTACH (FRONT_RING_INIT when start == 0)
        self.sring = sring
        self.req_prod_pvt = start
        self.rsp_cons = start
        self.nr_ents = sring.layout.nr_ents

    def free_requests(self) -> int:
        return self.nr_ents - idx_diff(self.req_prod_pvt, self.rsp_cons)

    def full(self) -> bool:
        return self.free_requests() == 0

    def unconsumed_responses(self) -> int:
        return idx_diff(self.sring.rsp_prod, self.rsp_cons)

    def put_request(self, data: bytes) -> int:
        """Write a request into the next private slot; returns its index."""
        if self.full():
            raise OverflowError("ring full")
        idx = self.req_prod_pvt
        slot = self.sring.entry(idx)
        slot[:len(data)] = data
        self.req_prod_pvt = _wrap(idx + 1)
        return idx

    def push_requests(self) -> None:
        self.sring.req_prod = self.req_prod_pvt

    def push_requests_and_check_notify(self) -> bool:
        old, new = self.sring.req_prod, self.req_prod_pvt
        self.sring.req_prod = new
        return notify_needed(new, old, self.sring.req_event)

    def take_response(self) -> memoryview:
        """The next unconsumed response; advances rsp_cons."""
        if not self.unconsumed_responses():
            raise IndexError("no unconsumed response")
        slot = self.sring.entry(self.rsp_cons)
        self.rsp_cons = _wrap(self.rsp_cons + 1)
        return slot

    def final_check_for_responses(self) -> bool:
        """RING_FINAL_CHECK_FOR_RESPONSES: before sleeping, ask to be woken and re-check."""
        if self.unconsumed_responses():
            return True
        self.sring.rsp_event = self.rsp_cons + 1
        return bool(self.unconsumed_responses())

    def response_prod_overflow(self, prod: int) -> bool:
        """RING_RESPONSE_PROD_OVERFLOW: a backend claiming more responses than fit."""
        return idx_diff(prod, self.rsp_cons) > self.nr_ents


class BackRing:
    """The backend's private indexes (struct <name>_back_ring)."""

    def __init__(self, sring: SharedRing, start: int = 0):
        # BACK_RING_ATTACH (BACK_RING_INIT when start == 0)
        self.sring = sring
        self.rsp_prod_pvt = start
        self.req_cons = start
        self.nr_ents = sring.layout.nr_ents

    def unconsumed_requests(self) -> int:
        return nr_unconsumed_requests(self.sring.req_prod, self.req_cons, self.rsp_prod_pvt, self.nr_ents)

    def request_cons_overflow(self, cons: int) -> bool:
        """RING_REQUEST_CONS_OVERFLOW: consuming ``cons`` would overrun unanswered slots."""
        return idx_diff(cons, self.rsp_prod_pvt) >= self.nr_ents

    def request_prod_overflow(self, prod: int) -> bool:
        """RING_REQUEST_PROD_OVERFLOW: a frontend claiming more requests than fit."""
        return idx_diff(prod, self.rsp_prod_pvt) > self.nr_ents

    def take_request(self) -> bytes:
        """A private copy of the next request (RING_COPY_REQUEST); advances req_cons."""
        if not self.unconsumed_requests():
            raise IndexError("no unconsumed request")
        data = bytes(self.sring.entry(self.req_cons))
        self.req_cons = _wrap(self.req_cons + 1)
        return data

    def put_response(self, data: bytes) -> int:
        idx = self.rsp_prod_pvt
        slot = self.sring.entry(idx)
        slot[:len(data)] = data
        self.rsp_prod_pvt = _wrap(idx + 1)
        return idx

    def push_responses(self) -> None:
        self.sring.rsp_prod = self.rsp_prod_pvt

    def push_responses_and_check_notify(self) -> bool:
        old, new = self.sring.rsp_prod, self.rsp_prod_pvt
        self.sring.rsp_prod = new
        return notify_needed(new, old, self.sring.rsp_event)

    def final_check_for_requests(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: before sleeping, ask to be woken and re-check."""
        if self.unconsumed_requests():
            return True
        self.sring.req_event = self.req_cons + 1
        return bool(self.unconsumed_requests())

"""The ring engine of one vif (io/netif.h), sans-IO: what Linux's xen-netback does per queue.

The engine reads the guest's TX and RX ring pages, copies packet data through
a ``GrantCopier`` port (GNTTABOP_copy in dom0, page dictionaries in unit
tests) and writes responses; it never touches a socket or an event channel:
``service_tx`` returns the frames the guest sent, ``queue_rx`` takes frames
for it, and both ``service_*`` say whether the guest must be notified.

Rules (Linux 6.1 drivers/net/xen-netback/netback.c; every ring entry is the
guest's to forge):

TX (frontend -> backend), per packet at ``req_cons``:
  ======================================================  =========================
  what the ring holds                                      answer
  ======================================================  =========================
  req_prod more than a ring ahead of our responses         fatal: disconnect
  NETTXF_extra_info with no extra slot published yet       fatal
  an extra slot of unknown type                            fatal
  a GSO extra (we never offer GSO)                         packet answered ERROR
  a multicast extra (control, no data)                     answered OKAY, no frame
  NETTXF_more_data past req_prod (a chain never ending)    fatal
  a chain of FATAL_SLOTS slots or more                     fatal
  a chain of more than XEN_NETIF_NR_SLOTS_MIN slots        packet answered ERROR
  a fragment larger than what the first slot left          fatal
  any slot's offset + size past its page                   fatal
  first slot size < ETH_HLEN                               packet answered ERROR
  a grant copy failing (bad, foreign or revoked gref)      packet answered ERROR
  NETTXF_csum_blank on a frame we cannot parse             dropped (answered OKAY)
  ======================================================  =========================
  Every consumed request gets exactly one response, in ring order; an extra
  slot's is NETIF_RSP_NULL.  A fatal error stops the engine (``fatal`` holds
  the reason); the device's owner disconnects it.  At most ``tx_budget``
  packets are taken per call, so one guest cannot hold dom0's loop.

RX (backend -> frontend): frames wait in a queue bounded in frames and bytes
(full: dropped and counted, the guest that posts no buffers only loses its
own frames).  A frame takes one posted buffer per page (more than one only
with the frontend's ``feature-sg``; without it a frame over a page is
dropped); responses carry offset 0, the bytes of each buffer, NETRXF_more_data
on all but the last and NETRXF_data_validated on the first (dom0 filled or
the sender computed every checksum).  A buffer whose grant copy fails is
answered NETIF_RSP_ERROR.  req_prod more than a ring ahead: fatal.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Protocol

from abi.fast import struct_of
from abi.grant_table import GNTST_okay
from abi.io import netif as N
from abi.io.ring import BackRing, RingLayout, SharedRing, idx_diff
from abi.x86_pte import PAGE_SIZE
from dom0.net.checksum import ChecksumError, fill_l4_checksum

log = logging.getLogger("dom0.net")

ETH_HLEN = 14                   # Linux's if_ether.h: a frame is at least its Ethernet header
FATAL_SLOTS = 20                # netback's fatal_skb_slots default: a chain this long is an attack
MAX_SLOTS = N.XEN_NETIF_NR_SLOTS_MIN    # longer chains are dropped, as netback's max_skb_slots
RX_QUEUE_FRAMES = 512
RX_QUEUE_BYTES = 2 << 20
TX_BUDGET = 64

TX_LAYOUT = RingLayout.of(N.netif_tx_request, N.netif_tx_response)
RX_LAYOUT = RingLayout.of(N.netif_rx_request, N.netif_rx_response)
_TX_REQ = struct_of(N.netif_tx_request)          # gref, offset, flags, id, size
_TX_RSP = struct_of(N.netif_tx_response)         # id, status
_EXTRA = struct_of(N.netif_extra_info)           # type, flags, union bytes
_RX_REQ = struct_of(N.netif_rx_request)          # id, pad, gref
_RX_RSP = struct_of(N.netif_rx_response)         # id, offset, flags, status


class GrantCopier(Protocol):
    """The I/O port: GNTTABOP_copy between a guest's grants and dom0."""

    def from_guest(self, domid: int, pieces: list[tuple[int, int, int]]) -> list[bytes | None]:
        """(gref, offset, size) each -> its bytes, or None where the copy failed."""

    def to_guest(self, domid: int, pieces: list[tuple[int, int, bytes]]) -> list[int]:
        """(gref, offset, data) each -> its GNTST_* status."""


class NetifFatal(Exception):
    """The frontend broke the protocol beyond one packet: the device stops."""


@dataclass
class Counters:
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0          # packets answered NETIF_RSP_ERROR
    tx_dropped: int = 0         # accepted from the ring but not delivered (unparseable csum_blank)
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_errors: int = 0          # buffers answered NETIF_RSP_ERROR
    rx_dropped: int = 0         # queue full or frame too large for the frontend
    foreign_writes: int = 0     # rsp_prod found changed by someone else (a bug somewhere: logged)
    rekicks: int = 0            # notifications sent again to a frontend asleep on answered slots

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _TxPacket:
    first_id: int
    flags: int
    pieces: list[tuple[int, int, int]]              # (gref, offset, size) to copy
    responses: list[tuple[int, int]] = field(default_factory=list)   # (id, status) in ring order
    error: bool = False
    control_only: bool = False


class NetifEngine:
    def __init__(self, domid: int, tx_page, rx_page, copier: GrantCopier, *, rx_sg: bool = False,
                 tx_budget: int = TX_BUDGET, rx_queue_frames: int = RX_QUEUE_FRAMES,
                 rx_queue_bytes: int = RX_QUEUE_BYTES):
        self.domid = domid
        self.tx = BackRing(SharedRing(tx_page, TX_LAYOUT))
        self.rx = BackRing(SharedRing(rx_page, RX_LAYOUT))
        self.copier = copier
        self.rx_sg = rx_sg
        self.tx_budget = tx_budget
        self.rx_queue: collections.deque[bytes] = collections.deque()
        self.rx_queue_frames = rx_queue_frames
        self.rx_queue_bytes = rx_queue_bytes
        self.rx_queued_bytes = 0
        self.counters = Counters()
        self.fatal: str | None = None
        self.published: dict[str, int] = {}     # the rsp_prod we last wrote, per ring

    # --- TX ---------------------------------------------------------------------------------

    def _fail(self, reason: str) -> NetifFatal:
        self.fatal = reason
        return NetifFatal(reason)

    def _tx_request(self, idx: int) -> tuple[int, int, int, int, int]:
        gref, offset, flags, req_id, size = _TX_REQ.unpack_from(self.tx.sring.entry(idx))
        return gref, offset, flags, req_id, size

    def _take_tx_packet(self, req_prod: int) -> tuple[_TxPacket, int]:
        """Parse the packet at req_cons; (packet, next index). Raises NetifFatal."""
        idx = self.tx.req_cons
        gref, offset, flags, req_id, size = self._tx_request(idx)
        idx += 1
        packet = _TxPacket(req_id, flags, [])
        extra_slots = 0
        gso = mcast = False
        if flags & N.NETTXF_extra_info:
            more = True
            while more:
                if idx_diff(req_prod, idx) == 0:
                    raise self._fail("an extra_info slot missing at the producer index")
                etype, eflags, _ = _EXTRA.unpack_from(self.tx.sring.entry(idx))
                idx += 1
                extra_slots += 1
                if not N.XEN_NETIF_EXTRA_TYPE_NONE < etype < N.XEN_NETIF_EXTRA_TYPE_MAX:
                    raise self._fail(f"an extra_info slot of unknown type {etype}")
                gso |= etype == N.XEN_NETIF_EXTRA_TYPE_GSO
                mcast |= etype in (N.XEN_NETIF_EXTRA_TYPE_MCAST_ADD, N.XEN_NETIF_EXTRA_TYPE_MCAST_DEL)
                more = bool(eflags & N.XEN_NETIF_EXTRA_FLAG_MORE)
        remaining = size
        frags: list[tuple[int, int, int, int]] = []     # (gref, offset, size, id)
        more = bool(flags & N.NETTXF_more_data)
        while more:
            if len(frags) + 1 >= FATAL_SLOTS:
                raise self._fail(f"a packet of more than {FATAL_SLOTS} slots")
            if idx_diff(req_prod, idx) == 0:
                raise self._fail("NETTXF_more_data past the producer index")
            f_gref, f_offset, f_flags, f_id, f_size = self._tx_request(idx)
            idx += 1
            if f_size > remaining:
                raise self._fail(f"a fragment of {f_size} bytes where {remaining} remain")
            if f_offset + f_size > PAGE_SIZE:
                raise self._fail(f"a fragment crossing its page ({f_offset}+{f_size})")
            remaining -= f_size
            frags.append((f_gref, f_offset, f_size, f_id))
            more = bool(f_flags & N.NETTXF_more_data)
        # The first slot holds what its fragments left of the packet's size.
        if offset + remaining > PAGE_SIZE:
            raise self._fail(f"a first slot crossing its page ({offset}+{remaining})")
        packet.pieces = [(gref, offset, remaining)] + [(g, o, s) for g, o, s, _ in frags]
        if len(frags) + 1 > MAX_SLOTS or size < ETH_HLEN or gso:
            packet.error = True
        packet.control_only = mcast and not packet.error
        # responses in ring order: the first request, its extras (NULL), then the fragments
        packet.responses = [(req_id, 0)] + [(0, N.NETIF_RSP_NULL)] * extra_slots + [(f[3], 0) for f in frags]
        return packet, idx

    def service_tx(self) -> tuple[list[bytes], bool]:
        """Take up to tx_budget packets: (frames to switch, notify the guest?). Raises NetifFatal."""
        if self.fatal:
            return [], False
        req_prod = self.tx.sring.req_prod
        if self.tx.request_prod_overflow(req_prod):
            raise self._fail(f"TX req_prod {req_prod} is more than a ring ahead of the responses")
        packets: list[_TxPacket] = []
        while idx_diff(req_prod, self.tx.req_cons) and len(packets) < self.tx_budget:
            packet, next_idx = self._take_tx_packet(req_prod)
            self.tx.req_cons = next_idx & 0xFFFFFFFF
            packets.append(packet)
        to_copy = [p for p in packets if not p.error and not p.control_only]
        pieces = [piece for p in to_copy for piece in p.pieces if piece[2]]
        copied = iter(self.copier.from_guest(self.domid, pieces) if pieces else [])
        frames = []
        for packet in packets:
            if packet in to_copy:
                parts = [next(copied) if piece[2] else b"" for piece in packet.pieces]
                if any(part is None for part in parts):
                    packet.error = True
                else:
                    frame = self._checked(b"".join(parts), packet.flags)     # type: ignore[arg-type]
                    if frame is not None:
                        frames.append(frame)
            status = N.NETIF_RSP_ERROR if packet.error else N.NETIF_RSP_OKAY
            if packet.error:
                self.counters.tx_errors += 1
            for rsp_id, rsp_status in packet.responses:
                self.tx.put_response(_TX_RSP.pack(rsp_id, status if rsp_status == 0 else rsp_status))
        notify = bool(packets) and self._push(self.tx, "TX")
        if not idx_diff(self.tx.sring.req_prod, self.tx.req_cons):
            self.tx.final_check_for_requests()      # ask to be kicked for the next packet
        return frames, notify

    def _checked(self, frame: bytes, flags: int) -> bytes | None:
        if flags & N.NETTXF_csum_blank:
            try:
                frame = fill_l4_checksum(frame)
            except ChecksumError as e:
                self.counters.tx_dropped += 1
                log.debug("d%d: TX frame dropped: %s", self.domid, e)
                return None
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(frame)
        return frame

    def asleep_on_responses(self) -> bool:
        """Has the frontend asked to be woken at a response we have already published?

        A frontend sets rsp_event = rsp_cons + 1 before it sleeps; rsp_prod at or past it
        means it was (or should have been) notified and has not looked yet: either busy,
        or the wakeup was lost on the way.  The owner kicks it again after a while."""
        if self.fatal:
            return False
        return any(idx_diff(ring.sring.rsp_prod, ring.sring.rsp_event) < 0x80000000
                   for ring in (self.tx, self.rx))

    def ring_state(self) -> dict:
        return {name: {"req_prod": r.sring.req_prod, "req_cons": r.req_cons, "rsp_prod": r.sring.rsp_prod,
                       "rsp_event": r.sring.rsp_event, "req_event": r.sring.req_event}
                for name, r in (("tx", self.tx), ("rx", self.rx))} | {"rx_queue": len(self.rx_queue)}

    def tx_pending(self) -> bool:
        return not self.fatal and bool(idx_diff(self.tx.sring.req_prod, self.tx.req_cons))

    # --- RX ---------------------------------------------------------------------------------

    def queue_rx(self, frame: bytes) -> bool:
        """Queue a frame for the guest; False (counted) when the queue is full or the frame can never fit."""
        too_big = len(frame) > (PAGE_SIZE * MAX_SLOTS if self.rx_sg else PAGE_SIZE)
        if (self.fatal or too_big or len(self.rx_queue) >= self.rx_queue_frames
                or self.rx_queued_bytes + len(frame) > self.rx_queue_bytes):
            self.counters.rx_dropped += 1
            return False
        self.rx_queue.append(frame)
        self.rx_queued_bytes += len(frame)
        return True

    def service_rx(self) -> bool:
        """Fill posted buffers with queued frames; notify the guest? Raises NetifFatal."""
        if self.fatal or not self.rx_queue:
            return False
        req_prod = self.rx.sring.req_prod
        if self.rx.request_prod_overflow(req_prod):
            raise self._fail(f"RX req_prod {req_prod} is more than a ring ahead of the responses")
        plan: list[tuple[int, int, int, bool, bool]] = []      # (id, gref, length, first, last)
        pieces: list[tuple[int, int, bytes]] = []
        delivered = 0
        while self.rx_queue:
            frame = self.rx_queue[0]
            chunks = [frame[i:i + PAGE_SIZE] for i in range(0, len(frame), PAGE_SIZE)] or [b""]
            if idx_diff(req_prod, self.rx.req_cons) < len(chunks):
                # RING_FINAL_CHECK_FOR_REQUESTS's order (netback's xenvif_rx_ring_slots_available):
                # ask to be kicked when enough buffers are posted, then look again.  Buffers
                # posted between our read of req_prod and this write were checked by the
                # frontend against the old req_event: without the second look they (and the
                # frames waiting for them) sat until dom0's periodic pass.
                self.rx.sring.req_event = (self.rx.req_cons + len(chunks)) & 0xFFFFFFFF
                req_prod = self.rx.sring.req_prod
                if self.rx.request_prod_overflow(req_prod):
                    raise self._fail(f"RX req_prod {req_prod} is more than a ring ahead of the responses")
                if idx_diff(req_prod, self.rx.req_cons) < len(chunks):
                    break
                continue
            self.rx_queue.popleft()
            self.rx_queued_bytes -= len(frame)
            for n, chunk in enumerate(chunks):
                req_id, _pad, gref = _RX_REQ.unpack_from(self.rx.sring.entry(self.rx.req_cons))
                self.rx.req_cons = (self.rx.req_cons + 1) & 0xFFFFFFFF
                plan.append((req_id, gref, len(chunk), n == 0, n == len(chunks) - 1))
                pieces.append((gref, 0, chunk))
            delivered += 1
            self.counters.rx_packets += 1
            self.counters.rx_bytes += len(frame)
        if not plan:
            return False
        statuses = self.copier.to_guest(self.domid, pieces)
        for (req_id, _gref, length, first, last), status in zip(plan, statuses):
            flags = (N.NETRXF_data_validated if first else 0) | (0 if last else N.NETRXF_more_data)
            if status != GNTST_okay:
                self.counters.rx_errors += 1
                self.rx.put_response(_RX_RSP.pack(req_id, 0, flags, N.NETIF_RSP_ERROR))
            else:
                self.rx.put_response(_RX_RSP.pack(req_id, 0, flags, length))
        return self._push(self.rx, "RX")

    def _push(self, ring: BackRing, name: str) -> bool:
        """Publish responses; rsp_prod is ours alone, so a value we did not write is reported."""
        seen, ours = ring.sring.rsp_prod, self.published.get(name, 0)
        if seen != ours:
            self.counters.foreign_writes += 1
            log.warning("d%d %s ring: rsp_prod is %d, we published %d (written by someone else)",
                        self.domid, name, seen, ours)
        notify = ring.push_responses_and_check_notify()
        self.published[name] = ring.rsp_prod_pvt
        return notify

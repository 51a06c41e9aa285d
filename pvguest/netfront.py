"""A netif frontend for Python guests: what Linux's xen-netfront does, plus hostile modes for tests.

``NetfrontRings`` is the ring side (sans-IO over two ring pages and a pool
of buffer pages the caller granted): ``send`` splits a frame into slots
(NETTXF_more_data chains, one slot per page piece) and ``receive`` takes
answered RX buffers, reassembling NETRXF_more_data chains; ``raw_tx`` puts
any request bytes at all on the TX ring, for tests that play a hostile
frontend.  ``Netfront`` connects a device of a running Python guest through
xenbus: waits for the backend's InitWait, grants the rings and buffers,
writes ``tx-ring-ref``, ``rx-ring-ref``, ``event-channel``,
``request-rx-copy``, ``feature-rx-notify``, ``feature-sg`` and goes
Connected, as netfront does.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from abi.fast import struct_of
from abi.io import netif as N
from abi.io.ring import FrontRing, RingLayout, SharedRing
from abi.io.xenbus import XenbusStateConnected, XenbusStateInitWait
from abi.x86_pte import PAGE_SIZE

TX_LAYOUT = RingLayout.of(N.netif_tx_request, N.netif_tx_response)
RX_LAYOUT = RingLayout.of(N.netif_rx_request, N.netif_rx_response)
_TX_REQ = struct_of(N.netif_tx_request)
_TX_RSP = struct_of(N.netif_tx_response)
_RX_REQ = struct_of(N.netif_rx_request)
_RX_RSP = struct_of(N.netif_rx_response)


@dataclass
class Buffer:
    gref: int
    page: memoryview


class NetfrontRings:
    def __init__(self, tx_page, rx_page, tx_buffers: list[Buffer], rx_buffers: list[Buffer], init: bool = True):
        self.tx_shared = SharedRing(tx_page, TX_LAYOUT)
        self.rx_shared = SharedRing(rx_page, RX_LAYOUT)
        if init:
            self.tx_shared.init()
            self.rx_shared.init()
        self.tx = FrontRing(self.tx_shared)
        self.rx = FrontRing(self.rx_shared)
        self.tx_free = list(tx_buffers)
        self.tx_inflight: dict[int, Buffer] = {}
        self.rx_buffers = {i: b for i, b in enumerate(rx_buffers)}
        self.rx_posted: set[int] = set()
        self.tx_statuses: list[int] = []
        self.next_tx_id = 0
        self._partial: list[bytes] = []

    # --- TX ---

    def send(self, frame: bytes, csum_blank: bool = False) -> bool:
        """Queue a frame (one slot per page-sized piece); False when out of slots or buffers."""
        self.reap_tx()
        pieces = [frame[i:i + PAGE_SIZE] for i in range(0, len(frame), PAGE_SIZE)] or [b""]
        if len(pieces) > min(self.tx.free_requests(), len(self.tx_free)):
            return False
        for n, piece in enumerate(pieces):
            buf = self.tx_free.pop()
            buf.page[:len(piece)] = piece
            req_id = self.next_tx_id
            self.next_tx_id = (self.next_tx_id + 1) & 0xFFFF
            self.tx_inflight[req_id] = buf
            flags = (N.NETTXF_more_data if n < len(pieces) - 1 else 0)
            if n == 0 and csum_blank:
                flags |= N.NETTXF_csum_blank | N.NETTXF_data_validated
            size = len(frame) if n == 0 else len(piece)
            self.tx.put_request(_TX_REQ.pack(buf.gref, 0, flags, req_id, size))
        return True

    def raw_tx(self, requests: list[tuple[int, int, int, int, int]]) -> None:
        """Hostile mode: (gref, offset, flags, id, size) each, as given."""
        for req in requests:
            self.tx.put_request(_TX_REQ.pack(*req))

    def raw_tx_bytes(self, entry: bytes) -> None:
        self.tx.put_request(entry)

    def push_tx(self) -> bool:
        """Publish; True if the backend asked to be notified."""
        return self.tx.push_requests_and_check_notify()

    def reap_tx(self) -> list[int]:
        """Statuses of answered TX requests (their buffers return to the pool)."""
        statuses = []
        while self.tx.unconsumed_responses():
            req_id, status = _TX_RSP.unpack_from(self.tx.take_response())
            if status != N.NETIF_RSP_NULL:
                buf = self.tx_inflight.pop(req_id, None)
                if buf is not None:
                    self.tx_free.append(buf)
            statuses.append(status)
        self.tx.final_check_for_responses()
        self.tx_statuses += statuses
        return statuses

    # --- RX ---

    def post_rx(self, count: int | None = None) -> bool:
        """Post free buffers (all, or `count`); True if the backend asked to be notified."""
        posted = 0
        for req_id, buf in self.rx_buffers.items():
            if req_id in self.rx_posted or self.rx.full() or (count is not None and posted >= count):
                continue
            self.rx.put_request(_RX_REQ.pack(req_id, 0, buf.gref))
            self.rx_posted.add(req_id)
            posted += 1
        return self.rx.push_requests_and_check_notify()

    def receive(self) -> list[bytes | int]:
        """Frames (bytes) and errors (negative statuses) answered so far."""
        out: list[bytes | int] = []
        while self.rx.unconsumed_responses():
            req_id, offset, flags, status = _RX_RSP.unpack_from(self.rx.take_response())
            self.rx_posted.discard(req_id)
            buf = self.rx_buffers.get(req_id)
            if status < 0 or buf is None or offset + status > PAGE_SIZE:
                self._partial = []
                out.append(status if status < 0 else N.NETIF_RSP_ERROR)
                continue
            self._partial.append(bytes(buf.page[offset:offset + status]))
            if not flags & N.NETRXF_more_data:
                out.append(b"".join(self._partial))
                self._partial = []
        self.rx.final_check_for_responses()
        return out


class Netfront:
    """device/vif/DEVID of a Python guest (pvguest.kernel.Kernel), connected to its backend."""

    def __init__(self, kernel, devid: int = 0, tx_buffers: int = 32, rx_buffers: int = 64,
                 sg: bool = True, rx_copy: bool = True, timeout: float = 20.0):
        self.kernel = kernel
        xs = kernel.xenbus
        self.path = f"{xs.get_domain_path(kernel.domid)}/device/vif/{devid}"
        self.backend_path = xs.read(f"{self.path}/backend").decode()
        self.backend_id = int(xs.read(f"{self.path}/backend-id"))
        self.mac = bytes(int(p, 16) for p in xs.read(f"{self.path}/mac").decode().split(":"))
        self._wait_backend(XenbusStateInitWait, timeout)
        gnttab = kernel.gnttab

        def granted() -> Buffer:
            pfn = kernel.pages.alloc()
            return Buffer(gnttab.grant_access(self.backend_id, pfn), kernel.page(pfn))

        tx_ring, rx_ring = granted(), granted()
        self.rings = NetfrontRings(tx_ring.page, rx_ring.page, [granted() for _ in range(tx_buffers)],
                                   [granted() for _ in range(rx_buffers)])
        self.port = kernel.evtchn.alloc_unbound(remote_dom=self.backend_id)
        with_keys = {"tx-ring-ref": tx_ring.gref, "rx-ring-ref": rx_ring.gref, "event-channel": self.port,
                     "request-rx-copy": int(rx_copy), "feature-rx-notify": 1, "feature-sg": int(sg)}
        for key, value in with_keys.items():
            xs.write(f"{self.path}/{key}", str(value))
        self.rings.post_rx()
        xs.write(f"{self.path}/state", str(XenbusStateConnected))
        self._wait_backend(XenbusStateConnected, timeout)

    def backend_state(self) -> int:
        try:
            return int(self.kernel.xenbus.read(f"{self.backend_path}/state"))
        except Exception:
            return 0

    def _wait_backend(self, state: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.backend_state() != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"backend {self.backend_path} never reached state {state}")
            time.sleep(0.02)

    def kick(self) -> None:
        self.kernel.notify(self.port)

    def send(self, frame: bytes, csum_blank: bool = False) -> bool:
        ok = self.rings.send(frame, csum_blank)
        if ok and self.rings.push_tx():
            self.kick()
        return ok

    def receive(self, timeout: float = 5.0, count: int = 1) -> list[bytes | int]:
        """Wait for at least `count` RX results (frames or error statuses); reposts buffers."""
        deadline = time.monotonic() + timeout
        out: list[bytes | int] = []
        while True:
            out += self.rings.receive()
            if self.rings.post_rx():
                self.kick()
            if len(out) >= count or time.monotonic() > deadline:
                return out
            self.kernel.wait(0.05)

    def wait_tx(self, count: int, timeout: float = 5.0) -> list[int]:
        """Wait until `count` TX responses arrived in all; their statuses."""
        deadline = time.monotonic() + timeout
        while len(self.rings.tx_statuses) < count and time.monotonic() < deadline:
            self.rings.reap_tx()
            if len(self.rings.tx_statuses) < count:
                self.kernel.wait(0.05)
        return self.rings.tx_statuses[:]


def eth_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload

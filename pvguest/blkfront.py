"""A blkif frontend for Python guests: the handshake, a ring, granted data pages, and hostile modes.

What xen-blkfront does, in a form tests can drive: find `device/vbd/N`,
wait for the backend's InitWait, read its features, grant the ring pages
(one, or 2**ring_page_order) and a pool of data pages, allocate the event
channel, publish ring-ref(s)/event-channel/protocol/feature-persistent and
go Initialised, wait for Connected.  `read`/`write`/`flush`/`discard` issue
one request each and wait for its response; `submit_raw` puts any 112 bytes
on the ring (hostile tests), `set_req_prod` publishes any index.
"""
from __future__ import annotations

import struct
import time

from abi.io import blkif as B
from abi.io import ring as R
from abi.io.xenbus import XenbusStateClosed, XenbusStateConnected, XenbusStateInitialised
from abi.x86_pte import PAGE_SIZE

ENTRY = R.RingLayout.of(B.blkif_request, B.blkif_response)
SEGMENT = struct.Struct("<IBBxx")


class BlkfrontError(Exception):
    pass


class BlkFront:
    def __init__(self, kernel, devid: int, ring_page_order: int = 0, persistent: bool = True,
                 data_pages: int = 16, timeout: float = 20.0):
        self.kernel = kernel
        self.xs = kernel.xenbus
        self.timeout = timeout
        home = self.xs.get_domain_path(kernel.domid)
        self.path = f"{home}/device/vbd/{devid}"
        self.backend = self.xs.read(f"{self.path}/backend").decode()
        self.backend_id = int(self.xs.read(f"{self.path}/backend-id"))
        self.wait_backend_state(2)
        self.features = {k: self.xs.read(f"{self.backend}/{k}").decode() for k in self.xs.directory(self.backend)}
        self.sectors = int(self.features["sectors"])
        self.info = int(self.features["info"])
        self.order = ring_page_order
        pages = [kernel.pages.alloc() for _ in range(1 << ring_page_order)]
        if pages != list(range(pages[0], pages[0] + len(pages))):
            raise BlkfrontError("ring pages are not contiguous")
        base = pages[0] * PAGE_SIZE
        self.sring = R.SharedRing(kernel.channel.memory[base:base + len(pages) * PAGE_SIZE],
                                  R.RingLayout(ENTRY.entry_size, R.ring_size(ENTRY.entry_size, len(pages) * PAGE_SIZE),
                                               len(pages) * PAGE_SIZE))
        self.sring.init()
        self.front = R.FrontRing(self.sring)
        self.ring_refs = [kernel.gnttab.grant_access(self.backend_id, pfn) for pfn in pages]
        self.data_pfns = [kernel.pages.alloc() for _ in range(data_pages)]
        self.data_refs = [kernel.gnttab.grant_access(self.backend_id, pfn) for pfn in self.data_pfns]
        self.port = kernel.evtchn.alloc_unbound(remote_dom=self.backend_id)
        self.next_id = 1
        keys = {"event-channel": str(self.port), "protocol": "x86_64-abi",
                "feature-persistent": "1" if persistent else "0"}
        if ring_page_order:
            keys["ring-page-order"] = str(ring_page_order)
            keys.update({f"ring-ref{i}": str(ref) for i, ref in enumerate(self.ring_refs)})
        else:
            keys["ring-ref"] = str(self.ring_refs[0])
        self.publish(keys, XenbusStateInitialised)
        self.wait_backend_state(XenbusStateConnected)

    # --- xenstore ---

    def publish(self, keys: dict[str, str], state: int | None = None) -> None:
        for k, v in keys.items():
            self.xs.write(f"{self.path}/{k}", v)
        if state is not None:
            self.xs.write(f"{self.path}/state", str(state))

    def backend_state(self) -> int:
        try:
            return int(self.xs.read(f"{self.backend}/state"))
        except Exception:
            return 0

    def wait_backend_state(self, wanted: int, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.backend_state() != wanted:
            if time.monotonic() > deadline:
                raise BlkfrontError(f"backend state {self.backend_state()}, waited for {wanted}")
            self.kernel.wait(0.02)

    def close(self) -> None:
        """Closing, Closed; then wait for the backend to close too (or, unplugged, to be gone)."""
        self.xs.write(f"{self.path}/state", "5")
        self.xs.write(f"{self.path}/state", str(XenbusStateClosed))
        deadline = time.monotonic() + self.timeout
        while self.backend_state() not in (XenbusStateClosed, 0):
            if time.monotonic() > deadline:
                raise BlkfrontError(f"backend state {self.backend_state()} after closing")
            self.kernel.wait(0.02)

    # --- requests ---

    def data(self, i: int) -> memoryview:
        return self.kernel.page(self.data_pfns[i])

    def request(self, op: int, sector: int, segments: list[tuple[int, int, int]], handle: int = 0) -> bytes:
        """A blkif_request's bytes; segments as (gref, first_sect, last_sect)."""
        rid = self.next_id
        self.next_id += 1
        segs = [{"gref": g, "first_sect": f, "last_sect": last} for g, f, last in segments]
        segs += [{"gref": 0, "first_sect": 0, "last_sect": 0}] * (B.BLKIF_MAX_SEGMENTS_PER_REQUEST - len(segs))
        return B.blkif_request.build({"operation": op, "nr_segments": len(segments), "handle": handle,
                                      "id": rid, "sector_number": sector, "seg": segs[:11]})

    def submit_raw(self, raw: bytes, notify: bool = True) -> None:
        self.front.put_request(raw)
        if self.front.push_requests_and_check_notify() and notify:
            self.kernel.notify(self.port)

    def set_req_prod(self, value: int) -> None:
        self.sring.req_prod = value
        self.kernel.notify(self.port)

    def responses(self, count: int, timeout: float | None = None) -> list[dict]:
        deadline = time.monotonic() + (timeout or self.timeout)
        out: list[dict] = []
        while len(out) < count:
            while self.front.unconsumed_responses() and len(out) < count:
                r = B.blkif_response.parse(bytes(self.front.take_response()))
                out.append({"id": r.id, "operation": r.operation, "status": r.status})
            if len(out) >= count:
                break
            if self.front.final_check_for_responses():
                continue
            if time.monotonic() > deadline:
                raise BlkfrontError(f"{len(out)} of {count} responses after the timeout")
            self.kernel.wait(0.02)
        return out

    def call(self, raw: bytes) -> dict:
        self.submit_raw(raw)
        return self.responses(1)[0]

    def _segments(self, nbytes: int) -> list[tuple[int, int, int]]:
        if nbytes % B.BLKIF_SECTOR_SIZE or not 0 < nbytes <= PAGE_SIZE * min(11, len(self.data_refs)):
            raise ValueError(f"{nbytes} bytes")
        segs = []
        for i in range(0, nbytes, PAGE_SIZE):
            n = min(PAGE_SIZE, nbytes - i) // B.BLKIF_SECTOR_SIZE
            segs.append((self.data_refs[i // PAGE_SIZE], 0, n - 1))
        return segs

    def read(self, sector: int, nbytes: int) -> tuple[int, bytes]:
        r = self.call(self.request(B.BLKIF_OP_READ, sector, self._segments(nbytes)))
        data = b"".join(bytes(self.data(i)) for i in range(-(-nbytes // PAGE_SIZE)))[:nbytes]
        return r["status"], data

    def write(self, sector: int, data: bytes, op: int = B.BLKIF_OP_WRITE) -> int:
        for i in range(0, len(data), PAGE_SIZE):
            chunk = data[i:i + PAGE_SIZE]
            self.data(i // PAGE_SIZE)[:len(chunk)] = chunk
        return self.call(self.request(op, sector, self._segments(len(data))))["status"]

    def flush(self) -> int:
        return self.call(self.request(B.BLKIF_OP_FLUSH_DISKCACHE, 0, []))["status"]

    def discard(self, sector: int, nr_sectors: int, secure: bool = False) -> int:
        rid = self.next_id
        self.next_id += 1
        raw = B.blkif_request_discard.build({"operation": B.BLKIF_OP_DISCARD,
                                             "flag": B.BLKIF_DISCARD_SECURE if secure else 0, "handle": 0,
                                             "id": rid, "sector_number": sector, "nr_sectors": nr_sectors})
        return self.call(raw.ljust(ENTRY.entry_size, b"\0"))["status"]

    def indirect(self, op: int, sector: int, segments: list[tuple[int, int, int]], page_index: int) -> dict:
        """An INDIRECT request whose segment list is written into data page `page_index`."""
        page = self.data(page_index)
        for i, (g, f, last) in enumerate(segments):
            SEGMENT.pack_into(page, i * SEGMENT.size, g, f, last)
        rid = self.next_id
        self.next_id += 1
        grefs = [self.data_refs[page_index]] + [0] * (B.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - 1)
        raw = B.blkif_request_indirect.build({"operation": B.BLKIF_OP_INDIRECT, "indirect_op": op,
                                              "nr_segments": len(segments), "id": rid,
                                              "sector_number": sector, "handle": 0, "indirect_grefs": grefs})
        return self.call(raw.ljust(ENTRY.entry_size, b"\0"))

"""Mapping a frontend's granted pages into dom0, with a persistent-grant cache.

A backend reaches guest memory only through grants: GNTTABOP_map_grant_ref
(batched, one hypercall for many refs) records the mapping in the
hypervisor and returns the frame, which dom0 then maps from the memfd
(channel.map_machine_frame, allowed because the mapping exists).  A map and
unmap pair costs two hypercalls and an mmap, tens of microseconds; a disk
doing that per 4 KiB page would crawl, hence blkif's "feature-persistent":
a frontend that sets it reuses a fixed pool of granted pages, and the
backend keeps each mapped until the device disconnects (`GrantCache`).

`host_addr` names a mapping of a process domain (the hypervisor keys its
records by it, as by a guest-physical slot); the slots handed out here lie
far above dom0's memory so they never name a page dom0 owns.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

from abi import grant_table as G
from abi.x86_pte import PAGE_SIZE
from abi.xen import HYPERCALL_NUMBERS
from dom0.xenbus.interfaces import HypercallChannel

log = logging.getLogger("dom0.xenbus.grants")

GRANT_TABLE_OP = HYPERCALL_NUMBERS["grant_table_op"]
HOST_SLOT_BASE = 1 << 40                 # first host_addr handed out (far above dom0's memory)
_MAP_SIZE = G.gnttab_map_grant_ref.sizeof()
_UNMAP_SIZE = G.gnttab_unmap_grant_ref.sizeof()


class GrantMapError(Exception):
    """A grant the frontend named could not be mapped (bad ref, not granted to us, ...)."""

    def __init__(self, domid: int, ref: int, status: int):
        super().__init__(f"d{domid} grant ref {ref}: GNTST {status}")
        self.domid, self.ref, self.status = domid, ref, status


@dataclass
class Mapping:
    """One granted page mapped in dom0."""

    domid: int
    ref: int
    handle: int
    host_addr: int
    writable: bool
    view: memoryview


class GrantMapper:
    """Batched GNTTABOP_map/unmap_grant_ref for one dom0 process.

    `scratch_addr`: a page of dom0's own pseudo-physical memory the argument
    arrays are built in (one page: 128 maps or 170 unmaps per hypercall).
    One mapper serves every backend of the process; it is not thread-safe
    (dom0 runs its backends on its one event loop).
    """

    def __init__(self, channel: HypercallChannel, scratch_addr: int):
        self.channel = channel
        self.scratch = scratch_addr
        self._next_slot = HOST_SLOT_BASE
        self._free_slots: list[int] = []
        self.live = 0                       # mappings made and not yet unmapped

    def _slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        self._next_slot += PAGE_SIZE
        return self._next_slot - PAGE_SIZE

    def map(self, domid: int, refs: list[int], writable: bool) -> list[Mapping | GrantMapError]:
        """Map each of `refs` of `domid`; per ref a Mapping or the GrantMapError saying why not."""
        results: list[Mapping | GrantMapError] = []
        per_call = PAGE_SIZE // _MAP_SIZE
        for start in range(0, len(refs), per_call):
            results += self._map_batch(domid, refs[start:start + per_call], writable)
        return results

    def _map_batch(self, domid: int, refs: list[int], writable: bool) -> list[Mapping | GrantMapError]:
        flags = G.GNTMAP_host_map | (0 if writable else G.GNTMAP_readonly)
        slots = [self._slot() for _ in refs]
        args = b"".join(G.gnttab_map_grant_ref.build(
            {"host_addr": slot, "flags": flags, "ref": ref & 0xFFFFFFFF, "dom": domid,
             "status": 0, "handle": 0, "dev_bus_addr": 0}) for ref, slot in zip(refs, slots))
        mem = self.channel.memory
        mem[self.scratch:self.scratch + len(args)] = args
        rc = self.channel.hypercall(GRANT_TABLE_OP, G.GNTTABOP_map_grant_ref, self.scratch, len(refs))
        out = bytes(mem[self.scratch:self.scratch + len(args)])
        results: list[Mapping | GrantMapError] = []
        for i, (ref, slot) in enumerate(zip(refs, slots)):
            op = G.gnttab_map_grant_ref.parse(out[i * _MAP_SIZE:(i + 1) * _MAP_SIZE])
            status = op.status if rc >= 0 else G.GNTST_general_error
            if status != G.GNTST_okay:
                self._free_slots.append(slot)
                results.append(GrantMapError(domid, ref, status))
                continue
            self.live += 1
            try:
                view = self.channel.map_machine_frame(op.dev_bus_addr >> 12, writable)
            except Exception as e:           # the hypervisor refused the frame it just gave us
                log.warning("d%d ref %d: mapping frame %#x failed: %s", domid, ref, op.dev_bus_addr >> 12, e)
                self.unmap([Mapping(domid, ref, op.handle, slot, writable, memoryview(b""))])
                results.append(GrantMapError(domid, ref, G.GNTST_general_error))
                continue
            results.append(Mapping(domid, ref, op.handle, slot, writable, view))
        return results

    def unmap(self, mappings: list[Mapping]) -> None:
        """Unmap (batched); dom0 drops its views so the frame is unreachable from here."""
        per_call = PAGE_SIZE // _UNMAP_SIZE
        for start in range(0, len(mappings), per_call):
            batch = mappings[start:start + per_call]
            args = b"".join(G.gnttab_unmap_grant_ref.build(
                {"host_addr": m.host_addr, "dev_bus_addr": 0, "handle": m.handle, "status": 0})
                for m in batch)
            mem = self.channel.memory
            mem[self.scratch:self.scratch + len(args)] = args
            rc = self.channel.hypercall(GRANT_TABLE_OP, G.GNTTABOP_unmap_grant_ref, self.scratch, len(batch))
            out = bytes(mem[self.scratch:self.scratch + len(args)])
            for i, m in enumerate(batch):
                status = G.gnttab_unmap_grant_ref.parse(out[i * _UNMAP_SIZE:(i + 1) * _UNMAP_SIZE]).status
                if rc < 0 or status != G.GNTST_okay:
                    log.warning("unmapping d%d ref %d (handle %d): rc %d status %d",
                                m.domid, m.ref, m.handle, rc, status)
                self.live -= 1
                self._free_slots.append(m.host_addr)
                m.view = memoryview(b"")


class GrantCache:
    """The data pages of one connected device: mapped on first use, kept if the frontend allows.

    With `persistent` (both ends advertised feature-persistent) a mapping
    stays until `release`, up to `max_persistent` of them (least recently
    used ones are unmapped beyond that, as blkback bounds its pool);
    without it, `end_request` unmaps what the request mapped.  A page mapped
    read-only (the frontend granted it so) serves writes to disk only.
    """

    def __init__(self, mapper: GrantMapper, domid: int, persistent: bool, max_persistent: int = 1056):
        self.mapper = mapper
        self.domid = domid
        self.persistent = persistent
        self.max_persistent = max_persistent
        self._kept: collections.OrderedDict[int, Mapping] = collections.OrderedDict()
        self._transient: list[Mapping] = []

    def get(self, refs: list[int], writable: bool) -> list[memoryview | GrantMapError]:
        """A view of each granted page; `writable` when the backend will write into it."""
        views: list[memoryview | GrantMapError | None] = []
        missing: list[int] = []
        for ref in refs:
            m = self._kept.get(ref)
            if m is not None and (m.writable or not writable):
                self._kept.move_to_end(ref)
                views.append(m.view)
            else:
                views.append(None)
                missing.append(ref)
        if missing:
            fresh = self._map(sorted(set(missing)), writable)
            views = [fresh[ref] if v is None else v for ref, v in zip(refs, views)]
        return [v for v in views if v is not None]

    def _map(self, refs: list[int], writable: bool) -> dict[int, memoryview | GrantMapError]:
        # A persistent page is asked for writable first: the frontend reuses it for reads too.
        want_rw = writable or self.persistent
        results = dict(zip(refs, self.mapper.map(self.domid, refs, want_rw)))
        if want_rw and not writable:
            retry = [ref for ref, r in results.items() if isinstance(r, GrantMapError)]
            if retry:
                results.update(zip(retry, self.mapper.map(self.domid, retry, False)))
        out: dict[int, memoryview | GrantMapError] = {}
        for ref, r in results.items():
            if isinstance(r, GrantMapError):
                out[ref] = r
                continue
            out[ref] = r.view
            if self.persistent:
                old = self._kept.pop(ref, None)
                if old is not None:
                    self._transient.append(old)   # a read-only one replaced by a writable one
                self._kept[ref] = r
            else:
                self._transient.append(r)
        while len(self._kept) > self.max_persistent:
            _, oldest = self._kept.popitem(last=False)
            self._transient.append(oldest)
        return out

    def end_request(self) -> None:
        """The request's I/O is done: unmap what is not kept."""
        if self._transient:
            self.mapper.unmap(self._transient)
            self._transient = []

    def release(self) -> None:
        """The device disconnects: every mapping goes."""
        self.end_request()
        if self._kept:
            self.mapper.unmap(list(self._kept.values()))
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

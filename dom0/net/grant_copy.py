"""GNTTABOP_copy from dom0: netback's data path, as Linux netback copies rather than maps.

A frame's slots are copied between the guest's granted pages and a staging
area of dom0's own pages (named by gmfn with DOMID_SELF, so the hypervisor
checks the guest's grant and never lets dom0 name a guest frame directly).
Pieces are packed into staging pages without crossing one, up to
MAX_OPS per hypercall; a batch larger than the area goes in several calls.
One copier serves every vif of dom0 (dom0's loop is one thread).
"""
from __future__ import annotations

import struct

from abi import grant_table as G
from abi.fast import struct_of
from abi.x86_pte import PAGE_SHIFT, PAGE_SIZE
from abi.xen import DOMID_SELF, HYPERCALL_NUMBERS

GRANT_TABLE_OP = HYPERCALL_NUMBERS["grant_table_op"]
_COPY = struct_of(G.gnttab_copy)       # source(u, domid, offset), dest(u, domid, offset), len, flags, status
OPS_PAGES = 4
MAX_OPS = OPS_PAGES * PAGE_SIZE // _COPY.size
_STATUS_OFFSET = _COPY.size - 4            # int16 status, then 2 bytes of padding


def _u(value: int) -> bytes:
    """gnttab_copy_ptr.u: a grant ref or a gmfn, as the union's 8 bytes."""
    return value.to_bytes(8, "little")


class ChannelGrantCopier:
    """GrantCopier over dom0's hypercall channel, staging in dom0 pfns [first_pfn, first_pfn + pages)."""

    def __init__(self, channel, first_pfn: int, pages: int):
        if pages <= OPS_PAGES:
            raise ValueError("the staging area needs more pages than the op array")
        self.channel = channel
        self.memory = channel.memory
        self.ops_addr = first_pfn << PAGE_SHIFT
        self.first_staging_pfn = first_pfn + OPS_PAGES
        self.staging_pages = pages - OPS_PAGES
        end = (first_pfn + pages) << PAGE_SHIFT
        if end > len(self.memory):
            raise ValueError(f"grant-copy staging area ends past dom0's memory ({end:#x})")
        self.hypercalls = 0

    def _batches(self, sizes: list[int]):
        """Split piece indexes into batches; yield [(index, pfn, offset)] per hypercall."""
        batch: list[tuple[int, int, int]] = []
        page, offset = 0, 0
        for i, size in enumerate(sizes):
            if offset + size > PAGE_SIZE:
                page, offset = page + 1, 0
            if page >= self.staging_pages or len(batch) >= MAX_OPS:
                yield batch
                batch, page, offset = [], 0, 0
            batch.append((i, self.first_staging_pfn + page, offset))
            offset += size
        if batch:
            yield batch

    def _run(self, ops: bytes, count: int) -> list[int]:
        self.memory[self.ops_addr:self.ops_addr + len(ops)] = ops
        rc = self.channel.hypercall(GRANT_TABLE_OP, G.GNTTABOP_copy, self.ops_addr, count)
        self.hypercalls += 1
        if rc < 0:
            return [G.GNTST_general_error] * count
        return [struct.unpack_from("<h", self.memory, self.ops_addr + i * _COPY.size + _STATUS_OFFSET)[0]
                for i in range(count)]

    def from_guest(self, domid: int, pieces: list[tuple[int, int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(pieces)
        for batch in self._batches([size for _, _, size in pieces]):
            ops = b"".join(
                _COPY.pack(_u(pieces[i][0]), domid, pieces[i][1], _u(pfn), DOMID_SELF, offset,
                           pieces[i][2], G.GNTCOPY_source_gref, 0)
                for i, pfn, offset in batch)
            for (i, pfn, offset), status in zip(batch, self._run(ops, len(batch))):
                if status == G.GNTST_okay:
                    at = (pfn << PAGE_SHIFT) + offset
                    out[i] = bytes(self.memory[at:at + pieces[i][2]])
        return out

    def to_guest(self, domid: int, pieces: list[tuple[int, int, bytes]]) -> list[int]:
        out = [G.GNTST_general_error] * len(pieces)
        for batch in self._batches([len(data) for _, _, data in pieces]):
            for i, pfn, offset in batch:
                at = (pfn << PAGE_SHIFT) + offset
                self.memory[at:at + len(pieces[i][2])] = pieces[i][2]
            ops = b"".join(
                _COPY.pack(_u(pfn), DOMID_SELF, offset, _u(pieces[i][0]), domid, pieces[i][1],
                           len(pieces[i][2]), G.GNTCOPY_dest_gref, 0)
                for i, pfn, offset in batch)
            for (i, _, _), status in zip(batch, self._run(ops, len(batch))):
                out[i] = status
        return out

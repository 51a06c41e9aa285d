"""The frame table: who owns each machine frame.

Per frame, Xen's `struct page_info` as parallel arrays (for speed):
owner, general reference count (`count`, plus the allocation reference
`allocated`, Xen's PGC_allocated), page type (`type`), type count
(`type_count`), the validated and pinned flags, and the linear-page-table
counter. The rules that change types and counts live in pvhyp/mm/pagetype.py;
this file only hands frames out and takes them back.
Frames are handed out scrubbed: no domain ever receives another's contents.
"""
from __future__ import annotations

from array import array

from abi.xen import DOMID_XEN
from pvhyp.memory import MachineMemory

# Owners besides a domain: DOMID_XEN owns the hypervisor's own frames (M2P, stubs,
# GDT/IDT, its page tables).
DOMID_FREE = -1       # not allocated
# A dead domain's frame that another domain still references (a foreign or
# granted mapping): kept out of the free pool until the last reference goes.
DOMID_ORPHAN = -2


class OutOfMemory(Exception):
    pass


class FrameTable:
    def __init__(self, memory: MachineMemory):
        self.memory = memory
        self.nr_frames = memory.nr_frames
        self.owner = array("i", [DOMID_FREE]) * self.nr_frames
        # Frame 0 is never given out: a zero mfn is a sentinel in too many places.
        self.owner[0] = DOMID_XEN
        n = self.nr_frames
        self.count = array("q", [0]) * n          # general references (not counting `allocated`)
        self.allocated = bytearray(n)             # the owner's allocation reference (PGC_allocated)
        self.type = bytearray(n)                  # PGT_* (pvhyp/mm/pagetype.py)
        self.type_count = array("q", [0]) * n
        self.validated = bytearray(n)
        self.pinned = bytearray(n)
        self.linear_pt_count = array("q", [0]) * n   # >0: holds linear entries; <0: used linearly
        self._free = list(range(self.nr_frames - 1, 0, -1))   # pop() gives low frames first

    @property
    def free_frames(self) -> int:
        return len(self._free)

    def alloc(self, owner: int, count: int = 1) -> list[int]:
        """`count` scrubbed frames for `owner`; all or nothing."""
        if count < 0 or count > len(self._free):
            raise OutOfMemory(f"asked for {count} frames, {len(self._free)} free")
        mfns = [self._free.pop() for _ in range(count)]
        for mfn in mfns:
            self._hand_out(mfn, owner)
        return mfns

    def _hand_out(self, mfn: int, owner: int) -> None:
        self.owner[mfn] = owner
        self.allocated[mfn] = 1
        self.count[mfn] = 0
        self.type[mfn] = 0
        self.type_count[mfn] = 0
        self.validated[mfn] = 0
        self.pinned[mfn] = 0
        self.linear_pt_count[mfn] = 0

    def alloc_contiguous(self, owner: int, count: int) -> int:
        """`count` physically contiguous frames (hypervisor tables); returns the first mfn."""
        free = set(self._free)
        run = 0
        for mfn in range(1, self.nr_frames):
            run = run + 1 if mfn in free else 0
            if run == count:
                first = mfn - count + 1
                self._free = [m for m in self._free if not first <= m <= mfn]
                for m in range(first, mfn + 1):
                    self._hand_out(m, owner)
                    self.memory.scrub(m)
                return first
        raise OutOfMemory(f"no run of {count} contiguous free frames")

    def free(self, mfn: int) -> None:
        """Scrub and return a frame to the free pool."""
        if self.owner[mfn] == DOMID_FREE:
            raise ValueError(f"double free of mfn {mfn:#x}")
        self.memory.scrub(mfn)
        self._hand_out(mfn, DOMID_FREE)
        self.allocated[mfn] = 0
        self._free.append(mfn)

    def owned_by(self, mfn: int, domid: int) -> bool:
        return 0 <= mfn < self.nr_frames and self.owner[mfn] == domid

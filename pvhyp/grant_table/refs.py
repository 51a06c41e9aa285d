"""How grants hold the frames they use: through the PV MMU's holds.

Xen takes a general reference on a granted page while it is mapped or being
copied, plus a PGT_writable_page type reference for write access (so a
granted page can never become a page table meanwhile). `hold` / `release`
are the PV MMU's (hv.mmu) hold_page / release_page, so its reference counts
and teardown (a dead domain's frame stays alive, an orphan, while a grantee
holds it) account for grants too.
"""
from __future__ import annotations


def hold(hv, mfn: int, owner, writable: bool) -> bool:
    mmu = hv.mmu
    with mmu.lock:
        return mmu.hold_page(mfn, owner, writable) == 0


def release(hv, mfn: int, writable: bool) -> None:
    mmu = hv.mmu
    with mmu.lock:
        mmu.release_page(mfn, writable)


def hold_table_frames(hv, d, mfns: list[int]) -> None:
    """Grant and status frames: the hypervisor writes them, the guest maps them; never page tables."""
    for mfn in mfns:
        hold(hv, mfn, d, True)


def free_table_frame(hv, mfn: int) -> bool:
    """Give a status frame back to the heap; False (Xen's -EBUSY) while the guest still maps it."""
    mmu = hv.mmu
    f = hv.frames
    with mmu.lock:
        if f.count[mfn] > 1:
            return False
        mmu.release_page(mfn, True)
        f.allocated[mfn] = 0
        if f.count[mfn] == 0:
            f.free(mfn)
        return True


def release_table_frames(hv, mfns: list[int]) -> None:
    """At domain destruction: the domain's teardown frees them with its other frames."""
    for mfn in mfns:
        release(hv, mfn, True)

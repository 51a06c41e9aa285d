"""Writable page tables: emulate a guest's direct write to one of its L1 tables.

With VMASST_TYPE_writable_pagetables a PV guest may write its L1 page tables
as if they were ordinary memory. They are mapped read-only, so the write
faults; the CPU engine decodes the faulting instruction and calls here, and
the write is validated exactly as an mmu_update of that entry would be
(Xen's ptwr_emulated_update in arch/x86/pv/ro-page-fault.c).

API for the CPU engine (all under hv.mmu.lock, taken here). The short form
`hv.mmu.ptwr_emulate(vcpu, addr, data, width, old=None) -> status` takes the
stored bytes (or an int) and returns just the status below.

    ptwr_emulate(vcpu, addr, value, width, old=None, cr2=None) -> PtwrResult
        A store of `width` bytes (1, 2, 4 or 8; naturally aligned) of `value`
        at guest-virtual `addr`, faulting at `cr2` (default: addr). With
        `old` it is a CMPXCHG: the write happens only if memory holds `old`.
    ptwr_rmw(vcpu, addr, width, update, cr2=None) -> PtwrResult
        An atomic read-modify-write (XCHG, LOCK BTS/BTR/AND/OR/...):
        `update(current) -> new`; result.old is the value before.

    PtwrResult.status:
        PTWR_OKAY            written (result.old: previous value, for rmw/xchg)
        PTWR_CMPXCHG_FAILED  not written; result.old is the value in memory
                             (set RAX/ZF from it as CMPXCHG does)
        PTWR_UNHANDLEABLE    not a writable-page-table case, or the new entry
                             is refused: deliver the original #PF to the guest
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from pvhyp.mm.flush import flush_tlb
from pvhyp.mm.pagetype import _PAGE_PRESENT, _PAGE_RW, PGT_l1_page_table, adjust_guest_l1e, pte_mfn

PTWR_OKAY = 0
PTWR_CMPXCHG_FAILED = 1
PTWR_UNHANDLEABLE = 2
VMASST_TYPE_writable_pagetables = 2


class PtwrResult(NamedTuple):
    status: int
    old: int = 0


_UNHANDLEABLE = PtwrResult(PTWR_UNHANDLEABLE)


def guest_get_eff_kern_l1e(mmu, vcpu, linear: int) -> int:
    """The L1 entry mapping `linear` in the vCPU's kernel page table (0 if none)."""
    pl1e = mmu.map_guest_l1e(vcpu, linear)
    return 0 if pl1e is None else mmu.read_entry(pl1e)


def ptwr_emulate(vcpu, addr: int, value: int, width: int, old: int | None = None,
                 cr2: int | None = None) -> PtwrResult:
    return _ptwr(vcpu, addr, width, cr2, lambda current: value, old)


def ptwr_rmw(vcpu, addr: int, width: int, update: Callable[[int], int],
             cr2: int | None = None) -> PtwrResult:
    return _ptwr(vcpu, addr, width, cr2, update, None, rmw=True)


def _ptwr(vcpu, addr, width, cr2, new_value, old, rmw=False) -> PtwrResult:
    d = vcpu.domain
    mmu = d.hv.mmu
    if not d.vm_assist >> VMASST_TYPE_writable_pagetables & 1:
        return _UNHANDLEABLE
    if width not in (1, 2, 4, 8):
        return _UNHANDLEABLE
    if cr2 is None:
        cr2 = addr
    with mmu.lock:
        pte = guest_get_eff_kern_l1e(mmu, vcpu, cr2)
        if pte & (_PAGE_PRESENT | _PAGE_RW) != _PAGE_PRESENT:
            return _UNHANDLEABLE
        mfn = pte_mfn(pte)
        if not mmu.get_page_from_mfn(mfn, d):
            return _UNHANDLEABLE
        f = mmu.frames
        try:
            if not (f.validated[mfn] and f.type_count[mfn]) or f.type[mfn] != PGT_l1_page_table:
                return _UNHANDLEABLE
            return _ptwr_emulated_update(mmu, vcpu, mfn, addr, cr2, width, new_value, old, rmw)
        finally:
            mmu.put_page(mfn)


def _ptwr_emulated_update(mmu, vcpu, mfn, addr, cr2, width, new_value, old, rmw) -> PtwrResult:
    d = vcpu.domain
    # Only naturally aligned stores within the faulting page.
    if (addr ^ cr2) & ~0xFFF or addr & (width - 1):
        return _UNHANDLEABLE
    maddr = (mfn << 12) | (addr & 0xFF8)
    full = mmu.read_entry(maddr)
    offset = (addr & 7) * 8
    width_mask = (1 << (width * 8)) - 1
    current = (full >> offset) & width_mask
    val = new_value(current) & width_mask
    # A sub-word store becomes a full-entry store of the merged value.
    nl1e = (full & ~(width_mask << offset)) | (val << offset)
    if old is not None and (old & width_mask) != current:
        return PtwrResult(PTWR_CMPXCHG_FAILED, current)
    if nl1e & _PAGE_PRESENT:
        if mmu.get_page_from_l1e(nl1e, d, d) < 0:
            return _UNHANDLEABLE
    nl1e = adjust_guest_l1e(nl1e)
    mmu.write_entry(maddr, nl1e)
    mmu.put_page_from_l1e(full, d)
    flush_tlb(d)
    return PtwrResult(PTWR_OKAY, current)

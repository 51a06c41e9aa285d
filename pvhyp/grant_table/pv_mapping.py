"""Grant host mappings in an x86 PV guest's page tables: Xen's create_grant_pv_mapping,
replace_grant_pv_mapping and steal_linear_address (arch/x86/pv/grant_table.c).

The PTE is installed through the PV MMU (hv.mmu): its reference on the
granted frame (and writable type) is taken with get_page_from_l1e(...,
grant=True), which is also how the MMU knows the foreign mapping is a grant.
Xen marks grant PTEs with a software bit (_PAGE_GNTTAB); pvhyp's MMU keeps
that knowledge in its own books instead, so the PTE carries no such bit.
"""
from __future__ import annotations

from abi import grant_table as G
from abi import x86_pte as P

_AVAIL_SHIFT = 9               # the first of _PAGE_AVAIL's bits


def grant_to_pte_flags(grant_flags: int) -> int:
    flags = P._PAGE_PRESENT | P._PAGE_ACCESSED | P._PAGE_DIRTY | P._PAGE_NX
    if grant_flags & G.GNTMAP_application_map:
        flags |= P._PAGE_USER
    if not grant_flags & G.GNTMAP_readonly:
        flags |= P._PAGE_RW
    flags |= ((grant_flags >> G._GNTMAP_guest_avail0) << _AVAIL_SHIFT) & P._PAGE_AVAIL
    return flags


def _locate_l1e(mmu, vcpu, addr: int, contains_pte: bool):
    """(machine address of the L1 entry, its table's mfn), or None; the table must be
    the caller's own L1 page table."""
    from pvhyp.mm.pagetype import PGT_l1_page_table
    d = vcpu.domain
    if contains_pte:
        if addr & 7:
            return None
        maddr = addr
    else:
        maddr = mmu.map_guest_l1e(vcpu, addr)
        if maddr is None:
            return None
    table = maddr >> 12
    if not mmu.get_page_from_mfn(table, d):
        return None
    try:
        if mmu.frames.type[table] != PGT_l1_page_table or not mmu.frames.type_count[table]:
            return None
        return maddr, table
    finally:
        mmu.put_page(table)


def create_grant_pv_mapping(vcpu, rd, addr: int, mfn: int, flags: int) -> int:
    from pvhyp.mm.pagetype import adjust_guest_l1e
    mmu = vcpu.domain.hv.mmu
    d = vcpu.domain
    nl1e = adjust_guest_l1e((mfn << 12) | grant_to_pte_flags(flags))
    with mmu.lock:
        where = _locate_l1e(mmu, vcpu, addr, bool(flags & G.GNTMAP_contains_pte))
        if where is None:
            return G.GNTST_general_error
        maddr, _ = where
        if mmu.get_page_from_l1e(nl1e, d, rd, grant=True):
            return G.GNTST_general_error
        ol1e = mmu.read_entry(maddr)
        mmu.write_entry(maddr, nl1e)
        mmu.put_page_from_l1e(ol1e, d)
    _flush(vcpu)
    return G.GNTST_okay


def replace_grant_pv_mapping(vcpu, addr: int, mfn: int, new_addr: int, flags: int) -> int:
    from pvhyp.mm.pagetype import adjust_guest_l1e
    mmu = vcpu.domain.hv.mmu
    d = vcpu.domain
    expected = adjust_guest_l1e((mfn << 12) | grant_to_pte_flags(flags))
    contains_pte = bool(flags & G.GNTMAP_contains_pte)
    with mmu.lock:
        if contains_pte and new_addr:
            return G.GNTST_general_error
        nl1e = 0
        if new_addr:
            stolen = _locate_l1e(mmu, vcpu, new_addr, False)
            if stolen is None:
                return G.GNTST_general_error
            nl1e = mmu.read_entry(stolen[0])
            mmu.write_entry(stolen[0], 0)
        where = _locate_l1e(mmu, vcpu, addr, contains_pte)
        ol1e = mmu.read_entry(where[0]) if where is not None else 0
        if where is None or (ol1e & P.PTE_FRAME_MASK) >> 12 != mfn or \
                (ol1e ^ expected) & (P._PAGE_PRESENT | P._PAGE_RW):
            mmu.put_page_from_l1e(nl1e, d)       # we are still responsible for the stolen PTE
            return G.GNTST_general_error
        mmu.write_entry(where[0], nl1e)
        mmu.put_page_from_l1e(ol1e, d, grant=True)
    _flush(vcpu)
    return G.GNTST_okay


def _flush(vcpu) -> None:
    from pvhyp.mm.flush import flush_tlb
    flush_tlb(vcpu.domain)

"""GNTTABOP_transfer: a PV guest gives one of its pages to another domain
(Xen's gnttab_transfer, steal_page and gnttab_prepare_for_transfer).

The giver must hold no other reference to the page (it is unmapped from its
page tables, not pinned, not granted): only then can it be stolen. The
receiver must have offered an entry with exactly GTF_accept_transfer naming
the giver; the page then becomes the receiver's, its MFN is written into the
entry (the receiver is not translated) and GTF_transfer_completed is set.
As in Xen, a page stolen from the giver is gone from it even when the
transfer then fails (bad receiver, no headroom, entry not offered).

A process domain cannot give pages away: its process keeps its memory
mapped, like a translated guest's (Xen answers steal_page -EOPNOTSUPP there).
"""
from __future__ import annotations

from abi import errno as E
from abi import grant_table as G
from abi.xen_x86_64 import INVALID_M2P_ENTRY
from pvhyp.domain import INVALID_MFN


def _special(hv, d, mfn: int) -> bool:
    """Frames the hypervisor shares with the domain (shared_info, grant and status frames)."""
    gt = d.grant_table
    return mfn == d.shared_info_mfn or (gt is not None and (mfn in gt.shared or mfn in gt.status))


def steal_page(d, mfn: int) -> int:
    """Take `mfn` away from `d` if `d` alone holds it: 0 or -errno."""
    hv = d.hv
    if not d.paging:
        return -E.EOPNOTSUPP
    f = hv.frames
    if not f.owned_by(mfn, d.domid) or _special(hv, d, mfn):
        return -E.EINVAL
    with hv.mmu.lock:
        if not f.allocated[mfn] or f.count[mfn] or f.type_count[mfn] or f.pinned[mfn]:
            return -E.EINVAL
        f.allocated[mfn] = 0
        f.type[mfn] = 0
    d.tot_pages -= 1
    return 0


def _remove_from_physmap(d, mfn: int) -> None:
    hv = d.hv
    pfn = hv.get_m2p(mfn)
    if pfn < len(d.p2m) and d.p2m[pfn] == mfn:
        d.p2m[pfn] = INVALID_MFN
    hv.set_m2p(mfn, INVALID_M2P_ENTRY)


def prepare_for_transfer(rd, ld, ref: int) -> int:
    """The receiver's entry must offer exactly this transfer: its table version, or 0."""
    rgt = rd.grant_table
    if ref >= rgt.nr_grant_entries():
        return 0
    flags, domid = rgt.header(ref)
    if flags != G.GTF_accept_transfer or domid != ld.domid:
        return 0
    rgt.write_u16(rgt.entry_maddr(ref), flags | G.GTF_transfer_committed)
    return rgt.gt_version


def gnttab_transfer_one(d, gop: dict) -> int:
    """One gnttab_transfer element from `d`: GNTST_*."""
    hv = d.hv
    with hv.gnttab_lock:
        mfn = gop["mfn"] if d.paging else d.pfn_to_mfn(gop["mfn"])
        if not 0 < mfn < hv.frames.nr_frames:
            return G.GNTST_bad_page
        rc = steal_page(d, mfn)
        if rc:
            return G.GNTST_bad_page if rc == -E.EINVAL else G.GNTST_general_error
        _remove_from_physmap(d, mfn)

        def lose_page(status):
            hv.frames.free(mfn)
            return status

        e = hv.domains.get(gop["domid"])
        if e is None or e.grant_table is None:
            return lose_page(G.GNTST_bad_domain)
        if e.is_dying or e.tot_pages >= e.max_pages:
            return lose_page(G.GNTST_general_error)
        e.tot_pages += 1
        ver = prepare_for_transfer(e, d, gop["ref"])
        if not ver:
            e.tot_pages -= 1
            return lose_page(G.GNTST_general_error)
        f = hv.frames
        f.owner[mfn] = e.domid
        f.allocated[mfn] = 1
        rgt = e.grant_table
        gfn = rgt.frame(gop["ref"])
        hv.set_m2p(mfn, gfn)                # guest_physmap_add_page for a non-translated receiver
        rgt.set_frame(gop["ref"], mfn)
        rgt.set_flags(rgt.entry_maddr(gop["ref"]), G.GTF_transfer_completed)
        if hv.trace.enabled:
            hv.trace.emit("grant", d.domid, 0, op="transfer", to=e.domid, ref=gop["ref"], mfn=mfn)
        return G.GNTST_okay

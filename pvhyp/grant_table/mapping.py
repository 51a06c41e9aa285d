"""GNTTABOP_map_grant_ref / unmap_grant_ref / unmap_and_replace: Xen's map_grant_ref,
unmap_common and unmap_common_complete, plus the two kinds of host mapping.

Host mappings:
  * an x86 PV guest (domain.paging): a PTE in its page tables, made by the
    PV MMU (`create_grant_pv_mapping` / `replace_grant_pv_mapping` in
    pvhyp.mm.mmu, called through `pv_mmu()`); without them such a request
    answers GNTST_general_error.
  * a process domain (dom0 process, Python guest): `host_addr` names the
    mapping, like a guest-physical slot; the mapping is recorded and the
    process maps the frame from the memfd itself (channel.map_machine_frame,
    allowed by `hv.may_host_map`). The frame's machine address is returned in
    dev_bus_addr, which Xen fills for every successful map.

Page references: Xen holds a reference on the granted page (and a writable
type reference for writable mappings) while it is mapped. They are taken
through `page_refs`, which uses the PV MMU's reference counts when it has
them and otherwise checks ownership only.
"""
from __future__ import annotations

import importlib

from abi import grant_table as G
from pvhyp.grant_table.table import (GNTPIN_devr_inc, GNTPIN_devw_inc, GNTPIN_devw_mask,
                                     GNTPIN_hstr_inc, GNTPIN_hstw_inc, GNTPIN_hstw_mask,
                                     INVALID_MAPTRACK_HANDLE, gnttab_lock, gntpin_incr2oflow_mask)
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE

GNTST = G
# A destroyed domain's frame that a grantee still maps: owned by nobody that can
# run, freed when the last grant use of it goes (Xen keeps the zombie domain).
DOMID_GRANT_ORPHAN = 0x7FF4      # DOMID_INVALID


def pv_mmu():
    """The PV MMU module when it offers grant PTE mapping, else None."""
    try:
        mmu = importlib.import_module("pvhyp.mm.mmu")
    except ModuleNotFoundError:
        return None
    return mmu if hasattr(mmu, "create_grant_pv_mapping") else None


class page_refs:
    """Xen's get_page/put_page and the PGT_writable_page type count, as far as the MMU keeps them."""

    @staticmethod
    def _mmu():
        mmu = pv_mmu()
        return mmu if mmu is not None and hasattr(mmu, "get_page") else None

    @staticmethod
    def get(hv, mfn: int, owner) -> bool:
        if not hv.frames.owned_by(mfn, owner.domid):
            return False
        mmu = page_refs._mmu()
        return mmu.get_page(hv, mfn, owner) if mmu else True

    @staticmethod
    def put(hv, mfn: int) -> None:
        mmu = page_refs._mmu()
        if mmu:
            mmu.put_page(hv, mfn)

    @staticmethod
    def get_writable(hv, mfn: int) -> bool:
        mmu = page_refs._mmu()
        return mmu.get_page_type(hv, mfn, mmu.PGT_writable_page) if mmu else True

    @staticmethod
    def put_type(hv, mfn: int) -> None:
        mmu = page_refs._mmu()
        if mmu:
            mmu.put_page_type(hv, mfn)


def get_paged_frame(rd, gfn: int, readonly: bool) -> tuple[int, int]:
    """The frame a grant names, with a reference taken: (GNTST_*, mfn).

    A PV guest writes machine frame numbers in its grants; a process domain
    (translated, like an HVM guest) writes its own pseudo-physical frames.
    """
    mfn = gfn if rd.paging else rd.pfn_to_mfn(gfn)
    if not page_refs.get(rd.hv, mfn, rd):
        return G.GNTST_bad_page, 0
    return G.GNTST_okay, mfn


# --- host mappings -------------------------------------------------------------------

def create_grant_host_mapping(vcpu, addr: int, mfn: int, flags: int, cache_flags: int) -> int:
    d = vcpu.domain
    if d.paging:
        mmu = pv_mmu()
        if mmu is None:
            return G.GNTST_general_error
        return mmu.create_grant_pv_mapping(vcpu, addr, mfn, flags, cache_flags)
    d.grant_table.host_maps[addr] = mfn
    return G.GNTST_okay


def replace_grant_host_mapping(vcpu, addr: int, mfn: int, new_addr: int, flags: int) -> int:
    d = vcpu.domain
    if d.paging:
        mmu = pv_mmu()
        if mmu is None:
            return G.GNTST_general_error
        return mmu.replace_grant_pv_mapping(vcpu, addr, mfn, new_addr, flags)
    # As Xen's p2m variant: no replacing, and the slot must hold this frame.
    if new_addr or d.grant_table.host_maps.get(addr) != mfn:
        return G.GNTST_general_error
    del d.grant_table.host_maps[addr]
    return G.GNTST_okay


# --- status flags ---------------------------------------------------------------------

def _type_ok(flags: int, mask: int, mapflag: bool, v2: bool) -> bool:
    kind = flags & mask
    return kind == G.GTF_permit_access or (v2 and not mapflag and kind == G.GTF_transitive)


def set_status(rgt, ref: int, act, readonly: bool, mapflag: bool, ldomid: int) -> int:
    """_set_status_v1/_v2: check the entry allows ldomid and set GTF_reading/GTF_writing."""
    mask = G.GTF_type_mask | (G.GTF_sub_page if mapflag else 0)
    v2 = rgt.gt_version == 2
    flags, domid = rgt.header(ref)
    if not act.pin and (not _type_ok(flags, mask, mapflag, v2) or domid != ldomid):
        return G.GNTST_general_error
    if not readonly and flags & G.GTF_readonly:
        return G.GNTST_general_error
    status = rgt.status_maddr(ref)
    rgt.set_flags(status, G.GTF_reading | (0 if readonly else G.GTF_writing))
    if v2:
        # v2 sets the separate status word first, then re-reads the entry the guest may have changed.
        flags, domid = rgt.header(ref)
        if not act.pin:
            if not _type_ok(flags, mask, mapflag, v2) or domid != ldomid or \
                    (not readonly and flags & G.GTF_readonly):
                rgt.clear_flags(status, G.GTF_writing | G.GTF_reading)
                return G.GNTST_general_error
        elif flags & G.GTF_readonly:
            rgt.clear_flags(status, G.GTF_writing)
            return G.GNTST_general_error
    return G.GNTST_okay


def reduce_status_for_pin(rgt, ref: int, act, readonly: bool) -> None:
    if ref >= rgt.nr_grant_entries():
        return
    clear = 0 if act.pin else G.GTF_reading
    if not readonly and not act.pin & (GNTPIN_hstw_mask | GNTPIN_devw_mask):
        clear |= G.GTF_writing
    if clear:
        rgt.clear_flags(rgt.status_maddr(ref), clear)


def pin_dropped(rgt, act) -> None:
    """A zombie table's frame goes back to the pool with its last use."""
    if act.pin or not rgt.dying:
        return
    hv = rgt.hv
    mfn = act.mfn
    if hv.frames.owner[mfn] == DOMID_GRANT_ORPHAN and \
            not any(a.pin and a.mfn == mfn for a in rgt.active):
        hv.frames.free(mfn)


# --- map ------------------------------------------------------------------------------

def map_grant_ref(vcpu, op: dict) -> None:
    """One gnttab_map_grant_ref: fills op status, handle, dev_bus_addr."""
    ld = vcpu.domain
    hv = ld.hv
    flags = op["flags"]
    readonly = bool(flags & G.GNTMAP_readonly)
    pin_incr = 0
    if flags & G.GNTMAP_device_map:
        pin_incr += GNTPIN_devr_inc if readonly else GNTPIN_devw_inc
    if flags & G.GNTMAP_host_map:
        pin_incr += GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
    if not pin_incr:
        op["status"] = G.GNTST_bad_gntref
        return
    if not ld.paging and flags & G.GNTMAP_contains_pte:
        op["status"] = G.GNTST_general_error       # a process domain has no page tables
        return
    rd = hv.domains.get(op["dom"])
    if rd is None or rd.grant_table is None:
        op["status"] = G.GNTST_bad_domain
        return
    with gnttab_lock:
        _map_locked(vcpu, ld, rd, op, flags, readonly, pin_incr)


def _map_locked(vcpu, ld, rd, op, flags, readonly, pin_incr) -> None:
    hv = ld.hv
    lgt, rgt = ld.grant_table, rd.grant_table
    handle = lgt.get_maptrack_handle(vcpu.vcpu_id)
    if handle == INVALID_MAPTRACK_HANDLE:
        op["status"] = G.GNTST_no_space
        return

    def fail(rc):
        op["status"] = rc
        lgt.put_maptrack_handle(handle)

    ref = op["ref"]
    if ref >= rgt.nr_grant_entries():
        return fail(G.GNTST_bad_gntref)
    act = rgt.active[ref]
    if act.pin and (act.domid != ld.domid or act.pin & gntpin_incr2oflow_mask(pin_incr) or act.is_sub_page):
        return fail(G.GNTST_general_error)

    got_ref = False
    if not act.pin or (not readonly and not act.pin & (GNTPIN_hstw_mask | GNTPIN_devw_mask)):
        rc = set_status(rgt, ref, act, readonly, True, ld.domid)
        if rc != G.GNTST_okay:
            return fail(rc)
        if not act.pin:
            gfn = rgt.frame(ref)
            rc, mfn = get_paged_frame(rd, gfn, readonly)
            if rc != G.GNTST_okay:
                reduce_status_for_pin(rgt, ref, act, readonly)
                return fail(rc)
            got_ref = True
            act.gfn, act.domid, act.mfn = gfn, ld.domid, mfn
            act.start, act.length, act.is_sub_page = 0, PAGE_SIZE, False
            act.trans_domain, act.trans_gref = rd, ref
    act.pin += pin_incr
    mfn = act.mfn
    cache_flags = rgt.header(ref)[0] & (G.GTF_PAT | G.GTF_PWT | G.GTF_PCD)

    refcnt = typecnt = 0
    host_map_created = False
    if got_ref or page_refs.get(hv, mfn, rd):
        refcnt = 1
    rc = G.GNTST_okay
    if not refcnt:
        rc = G.GNTST_general_error          # the frame changed hands: could not pin
    else:
        if flags & G.GNTMAP_device_map and not readonly:
            if page_refs.get_writable(hv, mfn):
                typecnt += 1
            else:
                rc = G.GNTST_general_error
        if rc == G.GNTST_okay and flags & G.GNTMAP_host_map:
            if flags & G.GNTMAP_device_map:
                if page_refs.get(hv, mfn, rd):
                    refcnt += 1
                else:
                    rc = G.GNTST_general_error
            if rc == G.GNTST_okay and not readonly:
                if page_refs.get_writable(hv, mfn):
                    typecnt += 1
                else:
                    rc = G.GNTST_general_error
            if rc == G.GNTST_okay:
                rc = create_grant_host_mapping(vcpu, op["host_addr"], mfn, flags, 0)
                host_map_created = rc == G.GNTST_okay

    if rc != G.GNTST_okay:
        if host_map_created:
            replace_grant_host_mapping(vcpu, op["host_addr"], mfn, 0, flags)
        for _ in range(typecnt):
            page_refs.put_type(hv, mfn)
        for _ in range(refcnt):
            page_refs.put(hv, mfn)
        act.pin -= pin_incr
        reduce_status_for_pin(rgt, ref, act, readonly)
        pin_dropped(rgt, act)
        return fail(rc)

    mt = lgt.maptrack[handle]
    mt.domid, mt.ref, mt.rgt, mt.mfn = rd.domid, ref, rgt, mfn
    mt.host_addr = op["host_addr"]
    mt.flags = flags & 0xFFFF          # Xen keeps the flags in 16 bits
    lgt.note_mapped(mfn, readonly, 1)
    op["dev_bus_addr"] = mfn << PAGE_SHIFT
    op["handle"] = handle
    op["status"] = G.GNTST_okay
    if hv.trace.enabled:
        hv.trace.emit("grant", ld.domid, vcpu.vcpu_id, op="map", dom=rd.domid, ref=ref,
                      flags=flags, handle=handle, mfn=mfn)


# --- unmap ----------------------------------------------------------------------------

def unmap_common(vcpu, host_addr: int, dev_bus_addr: int, new_addr: int, handle: int) -> int:
    """unmap_common + unmap_common_complete for one handle; returns GNTST_*."""
    ld = vcpu.domain
    lgt = ld.grant_table
    with gnttab_lock:
        if handle >= lgt.maptrack_limit:
            return G.GNTST_bad_handle
        mt = lgt.maptrack[handle]
        flags = mt.flags
        if not flags:
            return G.GNTST_bad_handle
        rgt = mt.rgt
        ref = mt.ref
        if ref >= rgt.nr_grant_entries():
            return G.GNTST_bad_handle
        act = rgt.active[ref]
        mfn = act.mfn
        if dev_bus_addr and flags & G.GNTMAP_device_map and dev_bus_addr != mfn << PAGE_SHIFT:
            return G.GNTST_bad_dev_addr
        done = 0
        if host_addr and flags & G.GNTMAP_host_map:
            rc = replace_grant_host_mapping(vcpu, host_addr, mfn, new_addr, flags)
            if rc < 0:
                return rc
            mt.flags &= ~G.GNTMAP_host_map
            done |= G.GNTMAP_host_map | (flags & G.GNTMAP_readonly)
        if dev_bus_addr and flags & G.GNTMAP_device_map:
            mt.flags &= ~G.GNTMAP_device_map
            done |= G.GNTMAP_device_map | (flags & G.GNTMAP_readonly)
        if not mt.flags & (G.GNTMAP_device_map | G.GNTMAP_host_map):
            mt.flags = 0
            mt.rgt = None
            lgt.note_mapped(mfn, bool(flags & G.GNTMAP_readonly), -1)
            lgt.put_maptrack_handle(handle)
        if done:
            _unmap_complete(ld, rgt, ref, act, mfn, done)
        if ld.hv.trace.enabled:
            ld.hv.trace.emit("grant", ld.domid, vcpu.vcpu_id, op="unmap", dom=rgt.domid, ref=ref,
                             handle=handle, done=done)
        return G.GNTST_okay


def _unmap_complete(ld, rgt, ref: int, act, mfn: int, done: int) -> None:
    hv = ld.hv
    readonly = bool(done & G.GNTMAP_readonly)
    if done & G.GNTMAP_device_map:
        if not readonly:
            page_refs.put_type(hv, mfn)
        page_refs.put(hv, mfn)
        act.pin -= GNTPIN_devr_inc if readonly else GNTPIN_devw_inc
    if done & G.GNTMAP_host_map:
        if not readonly:
            page_refs.put_type(hv, mfn)
        page_refs.put(hv, mfn)
        act.pin -= GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
    reduce_status_for_pin(rgt, ref, act, readonly)
    pin_dropped(rgt, act)


def release_mappings(d) -> None:
    """gnttab_release_mappings: a dying domain's grant mappings of others' pages go."""
    lgt = d.grant_table
    with gnttab_lock:
        for handle, mt in enumerate(lgt.maptrack):
            if not mt.flags:
                continue
            rgt, ref, flags = mt.rgt, mt.ref, mt.flags
            act = rgt.active[ref]
            done = flags & (G.GNTMAP_device_map | G.GNTMAP_host_map | G.GNTMAP_readonly)
            _unmap_complete(d, rgt, ref, act, act.mfn, done)
            mt.flags = 0
            mt.rgt = None
        lgt.mapped.clear()
        lgt.host_maps.clear()

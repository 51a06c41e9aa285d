"""GNTTABOP_map_grant_ref / unmap_grant_ref / unmap_and_replace: Xen's map_grant_ref,
unmap_common and unmap_common_complete, plus the two kinds of host mapping.

Host mappings:
  * an x86 PV guest (domain.paging): a PTE in its page tables
    (pv_mapping.py, through the PV MMU).
  * a process domain (dom0 process, Python guest): `host_addr` names the
    mapping, like a guest-physical slot; the mapping is recorded and the
    process maps the frame from the memfd itself (channel.map_machine_frame,
    allowed by `hv.may_host_map`). The frame's machine address is returned in
    dev_bus_addr, which Xen fills for every successful map.

References (refs.py): a device mapping holds the frame (writable type too
unless read-only) from map to unmap; a host mapping's hold belongs to the
host mapping itself (the PTE's reference for a PV guest), taken when it is
created and dropped when it is replaced.
"""
from __future__ import annotations

from abi import grant_table as G
from pvhyp.grant_table import pv_mapping, refs
from pvhyp.grant_table.table import (
    INVALID_MAPTRACK_HANDLE,
    GNTPIN_devr_inc,
    GNTPIN_devw_inc,
    GNTPIN_devw_mask,
    GNTPIN_hstr_inc,
    GNTPIN_hstw_inc,
    GNTPIN_hstw_mask,
    gntpin_incr2oflow_mask,
)
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE


def get_paged_frame(rd, gfn: int) -> tuple[int, int]:
    """The frame a grant names, if rd owns it: (GNTST_*, mfn).

    A PV guest writes machine frame numbers in its grants; a process domain
    (translated, like an HVM guest) writes its own pseudo-physical frames.
    """
    mfn = gfn if rd.paging else rd.pfn_to_mfn(gfn)
    if not rd.hv.frames.owned_by(mfn, rd.domid):
        return G.GNTST_bad_page, 0
    return G.GNTST_okay, mfn


# --- host mappings -------------------------------------------------------------------

def create_grant_host_mapping(vcpu, rd, addr: int, mfn: int, flags: int) -> int:
    d = vcpu.domain
    if d.paging:
        return pv_mapping.create_grant_pv_mapping(vcpu, rd, addr, mfn, flags)
    if not refs.hold(d.hv, mfn, rd, not flags & G.GNTMAP_readonly):
        return G.GNTST_general_error
    old = d.grant_table.host_maps.get(addr)
    if old is not None:
        # A new mapping in an occupied slot replaces the old one, as a p2m entry would.
        refs.release(d.hv, old[0], old[1])
    d.grant_table.host_maps[addr] = (mfn, not flags & G.GNTMAP_readonly)
    return G.GNTST_okay


def replace_grant_host_mapping(vcpu, addr: int, mfn: int, new_addr: int, flags: int) -> int:
    d = vcpu.domain
    if d.paging:
        return pv_mapping.replace_grant_pv_mapping(vcpu, addr, mfn, new_addr, flags)
    # As Xen's p2m variant: no replacing, and the slot must hold this frame.
    slot = d.grant_table.host_maps.get(addr)
    if new_addr or slot is None or slot[0] != mfn:
        return G.GNTST_general_error
    del d.grant_table.host_maps[addr]
    refs.release(d.hv, mfn, slot[1])
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
    with hv.gnttab_lock:
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

    if not act.pin or (not readonly and not act.pin & (GNTPIN_hstw_mask | GNTPIN_devw_mask)):
        rc = set_status(rgt, ref, act, readonly, True, ld.domid)
        if rc != G.GNTST_okay:
            return fail(rc)
        if not act.pin:
            gfn = rgt.frame(ref)
            rc, mfn = get_paged_frame(rd, gfn)
            if rc != G.GNTST_okay:
                reduce_status_for_pin(rgt, ref, act, readonly)
                return fail(rc)
            act.gfn, act.domid, act.mfn = gfn, ld.domid, mfn
            act.start, act.length, act.is_sub_page = 0, PAGE_SIZE, False
            act.trans_domain, act.trans_gref = rd, ref
    act.pin += pin_incr
    mfn = act.mfn

    # A frame that changed hands since it was pinned cannot be held: "could not pin".
    rc = G.GNTST_okay
    device_held = False
    if flags & G.GNTMAP_device_map:
        device_held = refs.hold(hv, mfn, rd, not readonly)
        if not device_held:
            rc = G.GNTST_general_error
    if rc == G.GNTST_okay and flags & G.GNTMAP_host_map:
        rc = create_grant_host_mapping(vcpu, rd, op["host_addr"], mfn, flags)
    if rc != G.GNTST_okay:
        if device_held:
            refs.release(hv, mfn, not readonly)
        act.pin -= pin_incr
        reduce_status_for_pin(rgt, ref, act, readonly)
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
        hv.trace.emit("grant", ld.domid, vcpu.vcpu_id, op="map", granter=rd.domid, ref=ref,
                      flags=flags, handle=handle, mfn=mfn)


# --- unmap ----------------------------------------------------------------------------

def unmap_common(vcpu, host_addr: int, dev_bus_addr: int, new_addr: int, handle: int) -> int:
    """unmap_common + unmap_common_complete for one handle; returns GNTST_*."""
    ld = vcpu.domain
    lgt = ld.grant_table
    with ld.hv.gnttab_lock:
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
            ld.hv.trace.emit("grant", ld.domid, vcpu.vcpu_id, op="unmap", granter=rgt.domid, ref=ref,
                             handle=handle, done=done)
        return G.GNTST_okay


def _unmap_complete(ld, rgt, ref: int, act, mfn: int, done: int) -> None:
    """Drop the pins (and the device mapping's hold; a host mapping dropped its own)."""
    readonly = bool(done & G.GNTMAP_readonly)
    if done & G.GNTMAP_device_map:
        refs.release(ld.hv, mfn, not readonly)
        act.pin -= GNTPIN_devr_inc if readonly else GNTPIN_devw_inc
    if done & G.GNTMAP_host_map:
        act.pin -= GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
    reduce_status_for_pin(rgt, ref, act, readonly)


def release_mappings(d) -> None:
    """gnttab_release_mappings: a dying domain's grant mappings of others' pages go.

    A PV guest's grant PTEs go with its page tables (the MMU's teardown puts
    their references); a process domain's recorded host mappings go here.
    """
    lgt = d.grant_table
    with d.hv.gnttab_lock:
        for mt in lgt.maptrack:
            if not mt.flags:
                continue
            rgt, ref, flags = mt.rgt, mt.ref, mt.flags
            act = rgt.active[ref]
            done = flags & (G.GNTMAP_device_map | G.GNTMAP_host_map | G.GNTMAP_readonly)
            _unmap_complete(d, rgt, ref, act, act.mfn, done)
            mt.flags = 0
            mt.rgt = None
        for mfn, writable in lgt.host_maps.values():
            refs.release(d.hv, mfn, writable)
        lgt.mapped.clear()
        lgt.host_maps.clear()

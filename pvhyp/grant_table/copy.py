"""GNTTABOP_copy, swap_grant_ref and cache_flush: Xen's gnttab_copy family.

A copy batch keeps its source and destination buffers claimed from one op
to the next while they name the same grant or frame, as Xen does
(gnttab_copy_buf_valid), and releases them at the end of the batch or on a
failed op.
"""
from __future__ import annotations

from abi import errno as E
from abi import grant_table as G
from abi import xen as X
from pvhyp.grant_table import refs
from pvhyp.grant_table.mapping import get_paged_frame, reduce_status_for_pin, set_status
from pvhyp.grant_table.table import (
    GNTPIN_devw_mask,
    GNTPIN_hstr_inc,
    GNTPIN_hstw_inc,
    GNTPIN_hstw_mask,
    gntpin_incr2oflow_mask,
)
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE


def release_grant_for_copy(rgt, gref: int, readonly: bool) -> None:
    act = rgt.active[gref]
    if rgt.gt_version == 1:
        td, trans_gref = rgt, gref
    else:
        td = act.trans_domain.grant_table if act.trans_domain is not None else rgt
        trans_gref = act.trans_gref
    act.pin -= GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
    reduce_status_for_pin(rgt, gref, act, readonly)
    if td is not rgt:
        release_grant_for_copy(td, trans_gref, readonly)


def acquire_grant_for_copy(rd, gref: int, ldom: int, readonly: bool, allow_transitive: bool = True):
    """Pin a grant for copying: (GNTST_*, mfn, page_off, length, owner of the frame).

    The caller holds the frame (refs.hold) for as long as it copies.
    """
    rgt = rd.grant_table
    pin_incr = GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
    if gref >= rgt.nr_grant_entries():
        return G.GNTST_bad_gntref, 0, 0, 0, None
    act = rgt.active[gref]
    if act.pin and (act.domid != ldom or act.pin & gntpin_incr2oflow_mask(pin_incr)):
        return G.GNTST_general_error, 0, 0, 0, None
    v2 = rgt.gt_version == 2
    flags = rgt.header(gref)[0]
    old_pin = act.pin
    hv = rd.hv
    needs_status = not old_pin or (not readonly and not old_pin & (GNTPIN_devw_mask | GNTPIN_hstw_mask))

    if v2 and flags & G.GTF_type_mask == G.GTF_transitive:
        if needs_status:
            rc = set_status(rgt, gref, act, readonly, False, ldom)
            if rc != G.GNTST_okay:
                return rc, 0, 0, 0, None

        def clear(rc):
            reduce_status_for_pin(rgt, gref, act, readonly)
            return rc, 0, 0, 0, None

        if not allow_transitive:
            return clear(G.GNTST_general_error)
        trans_domid, trans_gref = rgt.transitive(gref)
        if trans_domid == rd.domid:
            return clear(G.GNTST_general_error)
        td = hv.domains.get(trans_domid)
        if td is None or td.grant_table is None:
            return clear(G.GNTST_general_error)
        rc, mfn, off, length, owner = acquire_grant_for_copy(td, trans_gref, rd.domid, readonly, False)
        if rc != G.GNTST_okay:
            reduce_status_for_pin(rgt, gref, act, readonly)
            return rc, 0, 0, 0, None
        if old_pin and (act.domid != ldom or act.mfn != mfn or act.start != off or act.length != length
                        or act.trans_domain is not td or act.trans_gref != trans_gref or not act.is_sub_page):
            release_grant_for_copy(td.grant_table, trans_gref, readonly)
            return clear(G.GNTST_general_error)
        if not old_pin:
            act.domid, act.start, act.length = ldom, off, length
            act.trans_domain, act.trans_gref, act.mfn = td, trans_gref, mfn
            act.gfn = None
            # Always a sub-page: that keeps transitive grants from being mapped.
            act.is_sub_page = True
    elif needs_status:
        rc = set_status(rgt, gref, act, readonly, False, ldom)
        if rc != G.GNTST_okay:
            return rc, 0, 0, 0, None
        if not v2 or not flags & G.GTF_sub_page:
            gfn, off, length, is_sub_page = rgt.frame(gref), 0, PAGE_SIZE, False
        else:
            gfn, off, length = rgt.sub_page(gref)
            is_sub_page = True
        rc, mfn = get_paged_frame(rd, gfn)
        owner = rd
        if rc != G.GNTST_okay:
            reduce_status_for_pin(rgt, gref, act, readonly)
            return rc, 0, 0, 0, None
        if not act.pin:
            act.gfn, act.domid, act.is_sub_page = gfn, ldom, is_sub_page
            act.start, act.length = off, length
            act.trans_domain, act.trans_gref, act.mfn = rd, gref, mfn
        elif act.mfn != mfn or act.trans_domain is not rd or act.trans_gref != gref or \
                (act.is_sub_page and (not is_sub_page or act.start != off or act.length != length)):
            reduce_status_for_pin(rgt, gref, act, readonly)
            return G.GNTST_general_error, 0, 0, 0, None
    else:
        owner = rd
        if rd.is_dying or not hv.frames.owned_by(act.mfn, rd.domid):
            reduce_status_for_pin(rgt, gref, act, readonly)
            return G.GNTST_bad_domain, 0, 0, 0, None

    act.pin += pin_incr
    return G.GNTST_okay, act.mfn, act.start, act.length, owner


class CopyBuf:
    """One end of a copy (Xen's gnttab_copy_buf)."""

    def __init__(self):
        self.domain = None
        self.ptr_domid = None
        self.reset()

    def reset(self):
        self.ref = self.gmfn = None
        self.offset, self.len = 0, 0
        self.mfn = None             # set while claimed (Xen's buf->virt)
        self.have_grant = self.held = False
        self.read_only = False

    def release(self, hv) -> None:
        if self.have_grant:
            release_grant_for_copy(self.domain.grant_table, self.ref, self.read_only)
        if self.held:
            refs.release(hv, self.mfn, not self.read_only)
        self.reset()


class CopyBatch:
    """The state of one GNTTABOP_copy hypercall; call `one` per op, then `finish`."""

    def __init__(self, current):
        self.current = current
        self.hv = current.hv
        self.src = CopyBuf()
        self.dest = CopyBuf()

    def _lock_domain(self, buf: CopyBuf, domid: int, is_gref: bool) -> int:
        if domid != X.DOMID_SELF and not is_gref:
            return G.GNTST_permission_denied     # only DOMID_SELF may name a frame directly
        buf.domain = self.hv.domain_by_any_id(self.current, domid)
        if buf.domain is None:
            return G.GNTST_bad_domain
        buf.ptr_domid = domid
        return G.GNTST_okay

    def _unlock_domains(self) -> None:
        for buf in (self.src, self.dest):
            buf.domain = None
            buf.ptr_domid = None

    def _claim(self, ptr: dict, buf: CopyBuf, is_gref: bool, read_only: bool) -> int:
        buf.read_only = read_only
        if is_gref:
            ref = ptr["u"]["ref"]
            rc, mfn, off, length, owner = acquire_grant_for_copy(buf.domain, ref, self.current.domid, read_only)
            if rc != G.GNTST_okay:
                return rc
            buf.ref, buf.have_grant = ref, True
        else:
            # Only DOMID_SELF may name a frame. Checked here, at every claim, and not only
            # when the domain is (re)locked: a batch that locked domain D for a grant ref
            # keeps D for the next op with the same domid, which could then name one of
            # D's frames directly and write into it (found by pvhyp fuzz).
            if buf.ptr_domid != X.DOMID_SELF:
                return G.GNTST_permission_denied
            gmfn = ptr["u"]["gmfn"]
            rc, mfn = get_paged_frame(buf.domain, gmfn)
            if rc != G.GNTST_okay:
                return rc
            buf.gmfn, owner, off, length = gmfn, buf.domain, 0, PAGE_SIZE
        buf.mfn, buf.offset, buf.len = mfn, off, length
        if not refs.hold(self.hv, mfn, owner, not read_only):
            # Xen: no reference (bad page) for a source; no writable type for a destination.
            return G.GNTST_bad_page if read_only else G.GNTST_general_error
        buf.held = True
        return G.GNTST_okay

    @staticmethod
    def _valid(ptr: dict, buf: CopyBuf, is_gref: bool) -> bool:
        if buf.mfn is None:
            return False
        if is_gref:
            return buf.have_grant and ptr["u"]["ref"] == buf.ref
        return ptr["u"]["gmfn"] == buf.gmfn

    def one(self, op: dict) -> int:
        with self.hv.gnttab_lock:
            rc = self._one(op)
            if rc != G.GNTST_okay:
                self.src.release(self.hv)
                self.dest.release(self.hv)
            return rc

    def _one(self, op: dict) -> int:
        src_ptr, dest_ptr, flags = op["source"], op["dest"], op["flags"]
        src_gref = bool(flags & G.GNTCOPY_source_gref)
        dest_gref = bool(flags & G.GNTCOPY_dest_gref)
        src, dest = self.src, self.dest
        if src.domain is None or src_ptr["domid"] != src.ptr_domid or \
                dest.domain is None or dest_ptr["domid"] != dest.ptr_domid:
            src.release(self.hv)
            dest.release(self.hv)
            self._unlock_domains()
            rc = self._lock_domain(src, src_ptr["domid"], src_gref)
            if rc == G.GNTST_okay:
                rc = self._lock_domain(dest, dest_ptr["domid"], dest_gref)
            if rc != G.GNTST_okay:
                self._unlock_domains()
                return rc
        if not self._valid(src_ptr, src, src_gref):
            src.release(self.hv)
            rc = self._claim(src_ptr, src, src_gref, True)
            if rc != G.GNTST_okay:
                return rc
        if not self._valid(dest_ptr, dest, dest_gref):
            dest.release(self.hv)
            rc = self._claim(dest_ptr, dest, dest_gref, False)
            if rc != G.GNTST_okay:
                return rc
        length, s_off, d_off = op["len"], src_ptr["offset"], dest_ptr["offset"]
        if s_off + length > PAGE_SIZE or d_off + length > PAGE_SIZE:
            return G.GNTST_bad_copy_arg
        if s_off < src.offset or s_off + length > src.offset + src.len:
            return G.GNTST_general_error
        if d_off < dest.offset or d_off + length > dest.offset + dest.len:
            return G.GNTST_general_error
        buf = self.hv.memory.buf
        s = (src.mfn << PAGE_SHIFT) + s_off
        d = (dest.mfn << PAGE_SHIFT) + d_off
        buf[d:d + length] = buf[s:s + length]
        return G.GNTST_okay

    def finish(self) -> None:
        with self.hv.gnttab_lock:
            self.src.release(self.hv)
            self.dest.release(self.hv)
            self._unlock_domains()


# --- swap_grant_ref -------------------------------------------------------------------

def swap_grant_ref(current, ref_a: int, ref_b: int) -> int:
    gt = current.grant_table
    with current.hv.gnttab_lock:
        n = gt.nr_grant_entries()
        if ref_a >= n or ref_b >= n:
            return G.GNTST_bad_gntref
        if ref_a == ref_b:
            return G.GNTST_okay
        if gt.active[ref_a].pin or gt.active[ref_b].pin:
            return G.GNTST_eagain
        buf = gt.hv.memory.buf
        size = 8 if gt.gt_version == 1 else 16
        a, b = gt.entry_maddr(ref_a), gt.entry_maddr(ref_b)
        buf[a:a + size], buf[b:b + size] = buf[b:b + size], buf[a:a + size]
        if gt.gt_version == 2:
            sa, sb = gt.status_maddr(ref_a), gt.status_maddr(ref_b)
            buf[sa:sa + 2], buf[sb:sb + 2] = buf[sb:sb + 2], buf[sa:sa + 2]
        return G.GNTST_okay


# --- cache_flush ----------------------------------------------------------------------

def cache_flush(current, op: dict, cur_ref: int) -> tuple[int, int]:
    """_cache_flush: (ret, cur_ref); ret 1 means "more grants to search"."""
    offset, length, what = op["offset"], op["length"], op["op"]
    if offset >= PAGE_SIZE or length > PAGE_SIZE or offset + length > PAGE_SIZE or \
            what & ~(G.GNTTAB_CACHE_INVAL | G.GNTTAB_CACHE_CLEAN):
        return -E.EINVAL, cur_ref
    if length == 0 or what == 0:
        return (0 if not cur_ref else -E.EILSEQ), cur_ref
    hv = current.hv
    mfn = op["a"]["dev_bus_addr"] >> PAGE_SHIFT
    if not hv.memory.valid_mfn(mfn):
        return -E.EINVAL, cur_ref
    owner = hv.domains.get(hv.frames.owner[mfn])
    if owner is None or owner.grant_table is None:
        return -E.EPERM, cur_ref
    if owner is not current:
        with hv.gnttab_lock:
            rgt = owner.grant_table
            n = rgt.nr_grant_entries()
            end = min(cur_ref + (1 << 12), n)
            found = any(a.pin and a.domid == current.domid and a.mfn == mfn for a in rgt.active[cur_ref:end])
            if not found:
                if end < n:
                    return 1, end
                return -E.EINVAL, cur_ref
    # x86: invalidating without cleaning is not offered; cleaning writes back (nothing to do here).
    if what & G.GNTTAB_CACHE_INVAL and not what & G.GNTTAB_CACHE_CLEAN:
        return -E.EOPNOTSUPP, cur_ref
    return 0, cur_ref

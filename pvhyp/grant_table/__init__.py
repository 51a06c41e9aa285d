"""Grant tables v1 and v2: Xen's common/grant_table.c.

A domain grants another access to one of its frames by writing an entry
(GTF_permit_access, the grantee's domid, the frame) into its grant table;
the grantee maps it (mapping.py) or copies through it (copy.py) by
reference. This module holds the table-level ops (setup_table, query_size,
set_version, get_status_frames, get_version), the lifecycle hooks,
`hv.may_host_map` for process domains, and the fuzzer's consistency check.

Ops take the calling domain first and a dict in the abi struct's shape,
fill its OUT fields and return what Xen's function returns, so that
hypercalls/grant_table.py only copies in and out. One lock for a
hypervisor's grant state (`hv.gnttab_lock`, set by attach): map, unmap and
copy touch two domains' tables. Who may look at another domain's table is
the policy's (`hv.xsm`).
"""
from __future__ import annotations

import threading

from abi import errno as E
from abi import grant_table as G
from pvhyp.grant_table import refs
from pvhyp.grant_table.copy import CopyBatch, cache_flush, swap_grant_ref  # noqa: F401 (API)
from pvhyp.grant_table.mapping import map_grant_ref, release_mappings, unmap_common  # noqa: F401
from pvhyp.grant_table.table import GNTPIN_devw_mask, GNTPIN_hstw_mask, GrantTable
from pvhyp.grant_table.transfer import gnttab_transfer_one  # noqa: F401 (API)

UINT_MAX = 0xFFFF_FFFF


def attach(hv) -> None:
    hv.gnttab_lock = threading.RLock()      # this hypervisor's grant state (see the module docstring)
    hv.domain_create_hooks.append(grant_table_init)
    hv.domain_destroy_hooks.append(grant_table_destroy)
    hv.may_host_map = may_host_map


def grant_table_init(d) -> None:
    """A new domain's table, sized by XEN_DOMCTL_createdomain's limits when given (-1: Xen's defaults)."""
    config = d.config
    d.grant_table = GrantTable(d)
    if any(k in config for k in ("max_grant_frames", "max_maptrack_frames", "grant_opts")):
        version = config.get("grant_opts", 2) & 0xF        # XEN_DOMCTL_GRANT_version_mask
        gnttab_set_limits(d, config.get("max_grant_frames", -1), config.get("max_maptrack_frames", -1),
                          version or 2)


def gnttab_set_limits(d, max_grant_frames: int, max_maptrack_frames: int,
                      max_version: int = 2) -> int:
    """The toolstack's limits (XEN_DOMCTL_createdomain's max_grant_frames,
    max_maptrack_frames, grant_opts version), checked as Xen's grant_table_init: 0 or -EINVAL."""
    from pvhyp.grant_table.table import (
        DEFAULT_MAX_GRANT_FRAMES,
        DEFAULT_MAX_MAPTRACK_FRAMES,
        INITIAL_NR_GRANT_FRAMES,
        MAPTRACK_PER_PAGE,
    )
    gt = d.grant_table
    if not 1 <= max_version <= 2:
        return -E.EINVAL
    if max_grant_frames < 0:
        max_grant_frames = DEFAULT_MAX_GRANT_FRAMES
    if max_maptrack_frames < 0:
        max_maptrack_frames = DEFAULT_MAX_MAPTRACK_FRAMES
    if not INITIAL_NR_GRANT_FRAMES <= max_grant_frames <= DEFAULT_MAX_GRANT_FRAMES or \
            max_maptrack_frames > DEFAULT_MAX_MAPTRACK_FRAMES:
        return -E.EINVAL
    with d.hv.gnttab_lock:
        # Set at creation in Xen; here also later, never below what is in use.
        if max_grant_frames < gt.nr_grant_frames or max_maptrack_frames < gt.maptrack_limit // MAPTRACK_PER_PAGE \
                or (max_version == 1 and gt.gt_version == 2):
            return -E.EINVAL
        gt.max_grant_frames = max_grant_frames
        gt.max_maptrack_frames = max_maptrack_frames
        gt.max_version = max_version
    return 0


def grant_table_destroy(d) -> None:
    """Drop d's mappings of others' grants; keep frames others still use from d's grants."""
    gt = d.grant_table
    if gt is None:
        return
    release_mappings(d)
    with d.hv.gnttab_lock:
        # The MMU's teardown frees them with the domain's other frames, keeping the ones
        # a grantee still holds as orphans.
        refs.release_table_frames(d.hv, gt.shared + gt.status)


def may_host_map(domain, mfn: int, writable: bool) -> bool:
    """May a process domain map machine frame `mfn` (InProcessChannel.map_machine_frame)?

    Its own frames (memory, shared_info, grant and status frames), and frames
    it holds a grant mapping of: writable only through a writable mapping.
    """
    hv = domain.hv
    if hv.frames.owned_by(mfn, domain.domid):
        return True
    gt = domain.grant_table
    if gt is None:
        return False
    with hv.gnttab_lock:
        counts = gt.mapped.get(mfn)
        if not counts:
            return False
        return counts[1] > 0 if writable else True


def _gfn_of(d, mfn: int) -> int:
    """What setup_table reports: an MFN (PV guests and process domains alike, see the docs)."""
    return mfn


# --- table ops ------------------------------------------------------------------------

def gnttab_setup_table(current, op: dict, limit_max: int = UINT_MAX) -> list[int]:
    """Sets op["status"]; returns the frame numbers to copy to frame_list (may be fewer on error)."""
    d = current.hv.domain_by_any_id(current, op["dom"])
    if d is None:
        op["status"] = G.GNTST_bad_domain
        return []
    if current.hv.xsm.grant_setup(current, d):
        op["status"] = G.GNTST_permission_denied
        return []
    gt = d.grant_table
    nr = op["nr_frames"]
    with current.hv.gnttab_lock:
        if nr > gt.max_grant_frames or limit_max < nr:
            op["status"] = G.GNTST_general_error
            return []
        if (nr > gt.nr_grant_frames or (gt.gt_version > 1 and
                                        _status_frames_for(nr) > gt.nr_status_frames)) \
                and not gt.grow_table(nr):
            op["status"] = G.GNTST_general_error
            return []
        op["status"] = G.GNTST_okay
        return [_gfn_of(d, gt.shared[i]) for i in range(nr)]


def _status_frames_for(nr: int) -> int:
    from pvhyp.grant_table.table import grant_to_status_frames
    return grant_to_status_frames(nr)


def gnttab_query_size(current, op: dict) -> None:
    d = current.hv.domain_by_any_id(current, op["dom"])
    if d is None:
        op["status"] = G.GNTST_bad_domain
    elif current.hv.xsm.grant_query_size(current, d):
        op["status"] = G.GNTST_permission_denied
    else:
        gt = d.grant_table
        op["nr_frames"] = gt.nr_grant_frames
        op["max_nr_frames"] = gt.max_grant_frames
        op["status"] = G.GNTST_okay


def gnttab_get_status_frames(current, op: dict, limit_max: int = UINT_MAX) -> list[int]:
    d = current.hv.domain_by_any_id(current, op["dom"])
    if d is None:
        op["status"] = G.GNTST_bad_domain
        return []
    if current.hv.xsm.grant_setup(current, d):
        op["status"] = G.GNTST_permission_denied
        return []
    gt = d.grant_table
    with current.hv.gnttab_lock:
        nr = op["nr_frames"]
        if nr > gt.nr_status_frames or limit_max < nr:
            op["status"] = G.GNTST_general_error
            return []
        op["status"] = G.GNTST_okay
        return [_gfn_of(d, gt.status[i]) for i in range(nr)]


def gnttab_get_version(current, op: dict) -> int:
    d = current.hv.domain_by_any_id(current, op["dom"])
    if d is None:
        return -E.ESRCH
    rc = current.hv.xsm.grant_query_size(current, d)
    if rc:
        return rc
    op["version"] = d.grant_table.gt_version
    return 0


def gnttab_set_version(current, op: dict) -> int:
    """Switch the caller's table between v1 and v2; op["version"] is set to the version in force."""
    gt = current.grant_table
    res = _set_version(gt, op["version"])
    op["version"] = gt.gt_version
    return res


def _set_version(gt, version: int) -> int:
    if version not in (1, 2):
        return -E.EINVAL
    if version == 2 and gt.max_version == 1:
        return -E.ENOSYS
    if gt.gt_version == version:
        return 0
    with gt.hv.gnttab_lock:
        # Only the toolstack's reserved entries (console, xenstore) may be in use.
        if any(gt.active[i].pin for i in range(G.GNTTAB_NR_RESERVED_ENTRIES, gt.nr_grant_entries())):
            return -E.EBUSY
        reserved = []       # (flags incl. reading/writing, domid, frame) of the reserved entries
        if gt.gt_version == 1:
            if not gt.populate_status_frames(gt.nr_grant_frames):
                return -E.ENOMEM
            for i in range(G.GNTTAB_NR_RESERVED_ENTRIES):
                flags, domid = gt.header(i)
                reserved.append((flags, domid, gt.frame(i)))
        else:
            for i in range(G.GNTTAB_NR_RESERVED_ENTRIES):
                flags, domid = gt.header(i)
                kind = flags & G.GTF_type_mask
                if kind == G.GTF_transitive or (kind == G.GTF_permit_access and gt.frame(i) >> 32):
                    return -E.ERANGE
            for i in range(G.GNTTAB_NR_RESERVED_ENTRIES):
                flags, domid = gt.header(i)
                if flags & G.GTF_type_mask == G.GTF_permit_access:
                    status = gt.read_u16(gt.status_maddr(i))
                    reserved.append((flags | status, domid, gt.frame(i)))
                else:
                    reserved.append((0, 0, 0))
            if gt.status_frames_busy():
                return -E.EBUSY
            gt.unpopulate_status_frames()
        gt.clear_frames()
        gt.gt_version = version
        for i, (flags, domid, frame) in enumerate(reserved):
            if version == 1:
                gt.write_u16(gt.entry_maddr(i), flags)
            else:
                gt.write_u16(gt.status_maddr(i), flags & (G.GTF_reading | G.GTF_writing))
                gt.write_u16(gt.entry_maddr(i), flags & ~(G.GTF_reading | G.GTF_writing))
            gt.write_u16(gt.entry_maddr(i) + 2, domid)
            gt.set_frame(i, frame)
    return 0


# --- consistency (the fuzzer's oracle) -----------------------------------------------

def check_consistency(hv, check_flags: bool = True) -> list[str]:
    """Pins agree with maptrack entries and with GTF_reading/GTF_writing; [] when all is well.

    The GTF_reading/GTF_writing bits live in memory the granting guest can
    write (its entries, its v2 status frames): a guest that scribbles over an
    entry in use breaks that part of the picture by itself, so callers that
    let guests do so pass check_flags=False.
    """
    problems: list[str] = []
    with hv.gnttab_lock:
        tables = {d.domid: d.grant_table for d in hv.domains.values() if d.grant_table is not None}
        # Pins owed to grant mappings, per (granting table, ref): [hstw, hstr, devw, devr].
        expected: dict[tuple[int, int], list[int]] = {}
        for ldomid, lgt in tables.items():
            for handle, mt in enumerate(lgt.maptrack):
                if not mt.flags:
                    continue
                where = f"d{ldomid} handle {handle}"
                if mt.rgt is None or mt.ref >= mt.rgt.nr_grant_entries():
                    problems.append(f"{where}: refers to no grant")
                    continue
                act = mt.rgt.active[mt.ref]
                if act.domid != ldomid:
                    problems.append(f"{where}: active entry belongs to d{act.domid}")
                counts = expected.setdefault((id(mt.rgt), mt.ref), [0, 0, 0, 0])
                ro = bool(mt.flags & G.GNTMAP_readonly)
                if mt.flags & G.GNTMAP_host_map:
                    counts[1 if ro else 0] += 1
                if mt.flags & G.GNTMAP_device_map:
                    counts[3 if ro else 2] += 1
        for domid, gt in tables.items():
            if gt.gt_version not in (1, 2):
                problems.append(f"d{domid}: grant table version {gt.gt_version}")
            if gt.gt_version == 2 and gt.nr_status_frames < _status_frames_for(gt.nr_grant_frames):
                problems.append(f"d{domid}: too few status frames")
            if gt.gt_version == 1 and gt.nr_status_frames:
                problems.append(f"d{domid}: v1 table keeps status frames")
            for mfn in gt.shared + gt.status:
                if not hv.frames.owned_by(mfn, domid):
                    problems.append(f"d{domid}: grant frame {mfn:#x} not owned by the domain")
            for ref in range(gt.nr_grant_entries()):
                act = gt.active[ref]
                want = expected.get((id(gt), ref), [0, 0, 0, 0])
                have = [(act.pin >> s) & 0xFF for s in (0, 8, 16, 24)]
                # Copies pin only for the length of a hypercall, so at rest pins are mappings.
                if have != want:
                    problems.append(f"d{domid} ref {ref}: pin {have} but mappings {want}")
                if not check_flags:
                    continue
                status = gt.read_u16(gt.status_maddr(ref))
                if act.pin & (GNTPIN_hstw_mask | GNTPIN_devw_mask) and not status & G.GTF_writing:
                    problems.append(f"d{domid} ref {ref}: writably mapped without GTF_writing")
                if act.pin and not status & G.GTF_reading:
                    problems.append(f"d{domid} ref {ref}: in use without GTF_reading")
                if not act.pin and status & (G.GTF_reading | G.GTF_writing) and \
                        ref >= G.GNTTAB_NR_RESERVED_ENTRIES and gt.gt_version == 2:
                    problems.append(f"d{domid} ref {ref}: v2 status busy with no user")
    return problems

"""Live views of one domain's hypervisor state, for `pvhyp inspect DOM` (read-only).

Each view is a pure function of the live state returning plain data (JSON-able
dicts, lists, ints, strings), so the CLI prints it as text and `--json` as is;
the channel's OP_INSPECT (pvhyp/channel_server.py) is its one way out, asked
through the policy's `inspect_domain` hook. What each shows, and the Xen source
that holds the real thing:

    pagetables VA  the 4-level walk of VA in a vCPU's current CR3: each entry's raw
                   value, decoded flags, the frame's type, counts and owner
                   (xen/arch/x86/mm.c: get_page_type, page_info; the walk itself is
                   the CPU's, guest_walk_tables in xen/arch/x86/mm/guest_walk.c)
    frames         the domain's frames by type (L1..L4 pinned or not, writable,
                   descriptor pages, shared_info, grant-table frames, granted out,
                   mapped in) with counts, and with `verbose` the frames themselves
                   as mfn ranges (xen/arch/x86/mm.c, xen/arch/x86/include/asm/mm.h)
    evtchn         each port's state, binding (VIRQ, IPI, interdomain peer, unbound
                   remote), notify vCPU and its pending/masked bits in shared_info
                   (xen/common/event_channel.c, xen/common/event_2l.c)
    grants         the grant table's entries in use (flags, grantee, frame, pin
                   counts) and the maptrack: who maps what (xen/common/grant_table.c)

Rules, because every value read here is guest-controlled (PTEs, grant entries,
event bits): nothing is trusted as an index or a frame number before it is
checked against the frame table, nothing read can raise, and every list is
bounded (MAX_ITEMS, with a count of what was left out), so a reply always fits
one channel frame. Each view takes the lock its state lives under (the MMU's,
the event lock, the grant lock), the way the hypercalls that change it do;
guest memory (PTEs, bitmaps, entries) is read one aligned word at a time, as the
guest may be writing it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from abi import errno as E
from abi import grant_table as G
from abi import xen as X
from abi.x86_pte import (
    _PAGE_ACCESSED,
    _PAGE_AVAIL,
    _PAGE_DIRTY,
    _PAGE_GLOBAL,
    _PAGE_NX,
    _PAGE_PCD,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_PWT,
    _PAGE_RW,
    _PAGE_USER,
    PAGE_SHIFT,
    pte_mfn,
)
from abi.xen_x86_64 import INVALID_M2P_ENTRY
from pvhyp.event_channel import (
    ECS_FREE,
    ECS_INTERDOMAIN,
    ECS_IPI,
    ECS_PIRQ,
    ECS_RESERVED,
    ECS_UNBOUND,
    ECS_VIRQ,
    OFF_EVTCHN_MASK,
    OFF_EVTCHN_PENDING,
    OFF_PENDING_SEL,
    OFF_UPCALL_PENDING,
    vcpu_info_maddr,
)
from pvhyp.mm.frametable import DOMID_FREE, DOMID_ORPHAN
from pvhyp.mm.pagetype import (
    PGT_NAMES,
    PGT_l1_page_table,
    PGT_l4_page_table,
    PGT_seg_desc_page,
    PGT_writable_page,
)

if TYPE_CHECKING:
    from pvhyp.domain import Domain

MAX_ITEMS = 1024            # entries of one list in a reply (ports, grants, maptrack, ranges)
CANONICAL_LOW_END = 1 << 47
CANONICAL_HIGH_START = 0xFFFF_8000_0000_0000
VA_LIMIT = 1 << 64


class InspectError(Exception):
    """A request the view cannot answer: `errno` is Xen's, `text` says why in one line."""

    def __init__(self, errno: int, text: str):
        super().__init__(text)
        self.errno = errno
        self.text = text


# --- shared helpers ----------------------------------------------------------------------

# Bits of a page-table entry, in the order `pvhyp inspect` prints them (x86's names).
_ENTRY_BITS = ((_PAGE_PRESENT, "P"), (_PAGE_RW, "RW"), (_PAGE_USER, "US"), (_PAGE_PWT, "PWT"),
               (_PAGE_PCD, "PCD"), (_PAGE_ACCESSED, "A"), (_PAGE_DIRTY, "D"), (_PAGE_PSE, "PSE"),
               (_PAGE_GLOBAL, "G"), (_PAGE_AVAIL, "AVAIL"), (_PAGE_NX, "NX"))
_GUEST_KERNEL_BIT = 1 << 52     # Xen's _PAGE_GUEST_KERNEL (pvhyp/mm/pagetype.py sets it)


def _entry_flags(entry: int, level: int) -> list[str]:
    names = [name for bit, name in _ENTRY_BITS if entry & bit]
    if level == 1 and "PSE" in names:
        names[names.index("PSE")] = "PAT"       # bit 7 of an L1 entry is PAT
    if entry & _GUEST_KERNEL_BIT:
        names.append("GUEST_KERNEL")
    return names


def _domain_name(hv, domid: int) -> str:
    special = {DOMID_FREE: "free", DOMID_ORPHAN: "orphan", X.DOMID_XEN: "xen", X.DOMID_IO: "io"}
    return special.get(domid, f"d{domid}")


def frame_info(hv, mfn: int) -> dict:
    """What the frame table says of one machine frame (Xen's struct page_info); the
    caller holds the MMU lock. An mfn outside machine memory says so."""
    frames = hv.frames
    if not hv.memory.valid_mfn(mfn):
        return {"mfn": mfn, "valid": False}
    pfn = hv.get_m2p(mfn)
    return {"mfn": mfn, "valid": True, "owner": _domain_name(hv, frames.owner[mfn]),
            "pfn": None if pfn == INVALID_M2P_ENTRY else pfn,
            "type": PGT_NAMES.get(frames.type[mfn], str(frames.type[mfn])),
            "type_count": frames.type_count[mfn], "count": frames.count[mfn],
            "allocated": bool(frames.allocated[mfn]), "validated": bool(frames.validated[mfn]),
            "pinned": bool(frames.pinned[mfn])}


def _bounded(items: list, limit: int = MAX_ITEMS) -> tuple[list, int]:
    """The first `limit` items and how many were left out."""
    return items[:limit], max(0, len(items) - limit)


def _ranges(mfns: list[int]) -> list[list[int]]:
    """Sorted frame numbers as [first, last] runs: a 1 GiB domain's frames in a few lines."""
    runs: list[list[int]] = []
    for mfn in sorted(mfns):
        if runs and runs[-1][1] + 1 == mfn:
            runs[-1][1] = mfn
        else:
            runs.append([mfn, mfn])
    return runs


# --- pagetables ----------------------------------------------------------------------------

def pagetables(d: "Domain", va: int, vcpu_id: int = 0, verbose: bool = False) -> dict:
    """The walk of `va` through vCPU `vcpu_id`'s current L4 (kernel or user, as the CPU uses it)."""
    hv = d.hv
    if not d.paging:
        raise InspectError(E.EINVAL, f"d{d.domid} is a process domain: it has no page tables")
    if not 0 <= vcpu_id < len(d.vcpus):
        raise InspectError(E.EINVAL, f"d{d.domid} has no vCPU {vcpu_id}")
    if not 0 <= va < VA_LIMIT or CANONICAL_LOW_END <= va < CANONICAL_HIGH_START:
        raise InspectError(E.EINVAL, f"virtual address {va:#x} is not canonical")
    vcpu = d.vcpus[vcpu_id]
    levels: list[dict] = []
    result: dict = {"domid": d.domid, "vcpu": vcpu_id, "va": va, "kernel_mode": vcpu.kernel_mode,
              "cr3_mfn": vcpu.current_table, "levels": levels, "maps": None, "stops": None}
    with hv.mmu.lock:
        table = vcpu.current_table
        result["cr3_frame"] = frame_info(hv, table) if table else None
        if not table:
            result["stops"] = "the vCPU has no page table yet (not started)"
            return result
        for level in (4, 3, 2, 1):
            index = (va >> (PAGE_SHIFT + 9 * (level - 1))) & 0x1FF
            if not hv.memory.valid_mfn(table):      # a stale or hostile frame number
                result["stops"] = f"L{level} table frame {table:#x} is outside machine memory"
                return result
            entry = hv.memory.read_u64((table << PAGE_SHIFT) + index * 8)
            mfn = pte_mfn(entry)
            row: dict = {"level": level, "table_mfn": table, "index": index, "entry": entry,
                   "flags": _entry_flags(entry, level), "frame": None}
            levels.append(row)
            if not entry & _PAGE_PRESENT:
                result["stops"] = f"L{level} entry not present: the access would #PF"
                return result
            row["frame"] = frame_info(hv, mfn)
            if level in (3, 2) and entry & _PAGE_PSE:
                size = 1 << (PAGE_SHIFT + 9 * (level - 1))
                result["maps"] = {"maddr": (mfn << PAGE_SHIFT) + (va & (size - 1)), "page_size": size}
                return result
            table = mfn
        result["maps"] = {"maddr": (table << PAGE_SHIFT) | (va & 0xFFF), "page_size": 1 << PAGE_SHIFT}
    return result


# --- frames --------------------------------------------------------------------------------

def frames(d: "Domain", verbose: bool = False) -> dict:
    """The domain's frames by what they are used as now. A frame is counted once, in the
    first category that fits (special frames first, then its page type)."""
    hv = d.hv
    ft = hv.frames
    special: dict[int, str] = {}
    if d.shared_info_mfn:
        special[d.shared_info_mfn] = "shared_info"
    gt = d.grant_table
    granted_out: set[int] = set()
    mapped_in: dict[int, int] = {}
    with hv.gnttab_lock:
        if gt is not None:
            for mfn in gt.shared:
                special[mfn] = "grant_table"
            for mfn in gt.status:
                special[mfn] = "grant_status"
            granted_out = {act.mfn for act in gt.active if act.pin}
            mapped_in = {mfn: sum(counts) for mfn, counts in gt.mapped.items()}
    categories: dict[str, list[int]] = {}
    # Who owns a frame changes only as the domain grows, shrinks or dies, none of which the
    # MMU lock orders: find the domain's frames first, so the lock (which every guest
    # page-table update takes) is held only to read their types.
    owner = ft.owner
    owned = [mfn for mfn in range(ft.nr_frames) if owner[mfn] == d.domid]
    with hv.mmu.lock:
        types, type_count, pinned = ft.type, ft.type_count, ft.pinned
        for mfn in owned:
            name = special.get(mfn)
            if name is None:
                t = types[mfn]
                if PGT_l1_page_table <= t <= PGT_l4_page_table and type_count[mfn]:
                    name = f"L{t} {'pinned' if pinned[mfn] else 'unpinned'}"
                elif t == PGT_seg_desc_page and type_count[mfn]:
                    name = "descriptor table"
                elif mfn in granted_out:
                    name = "granted out"
                elif t == PGT_writable_page and type_count[mfn]:
                    name = "writable"
                else:
                    name = "other"
            categories.setdefault(name, []).append(mfn)
        foreign = sorted({key >> 1 for key in d.mm.foreign_maps}) if d.mm is not None else []
    result: dict = {"domid": d.domid, "tot_pages": d.tot_pages, "max_pages": d.max_pages,
                    "counts": {name: len(mfns) for name, mfns in sorted(categories.items())},
                    "granted_out": len(granted_out), "mapped_in": len(set(mapped_in) | set(foreign))}
    if verbose:
        lists = {}
        for name, mfns in sorted(categories.items()):
            runs, left_out = _bounded(_ranges(mfns))
            lists[name] = {"ranges": runs, "left_out": left_out}
        runs, left_out = _bounded(_ranges(list(set(mapped_in) | set(foreign))))
        lists["mapped in (foreign or granted)"] = {"ranges": runs, "left_out": left_out}
        result["lists"] = lists
    return result


# --- event channels --------------------------------------------------------------------------

_STATE_NAMES = {ECS_FREE: "free", ECS_RESERVED: "reserved", ECS_UNBOUND: "unbound",
                ECS_INTERDOMAIN: "interdomain", ECS_PIRQ: "pirq", ECS_VIRQ: "virq", ECS_IPI: "ipi"}
_VIRQ_NAMES = {value: name for name, value in vars(X).items()
               if name.startswith("VIRQ_") and isinstance(value, int) and not name.startswith("VIRQ_ARCH")}


def _bit(hv, maddr: int, nr: int) -> bool:
    return bool(hv.memory.buf[maddr + (nr >> 3)] >> (nr & 7) & 1)


def evtchn(d: "Domain", verbose: bool = False) -> dict:
    """Every port not free, with its binding and its bits in shared_info (2-level ABI)."""
    hv = d.hv
    shared = d.shared_info_mfn << PAGE_SHIFT if d.shared_info_mfn else None
    ports: list[dict] = []
    with hv.evtchn_lock:
        chans = list(d.evtchn.chans) if d.evtchn is not None else []
        for ch in chans:
            if ch.state == ECS_FREE:
                continue
            row: dict = {"port": ch.port, "state": _STATE_NAMES.get(ch.state, str(ch.state)),
                         "notify_vcpu": ch.notify_vcpu_id}
            if ch.state == ECS_UNBOUND:
                row["remote_domid"] = ch.remote_domid
            elif ch.state == ECS_INTERDOMAIN:
                peer = ch.remote_dom
                row["peer"] = {"domid": peer.domid if peer is not None else None, "port": ch.remote_port}
            elif ch.state == ECS_VIRQ:
                row["virq"] = _VIRQ_NAMES.get(ch.virq, f"VIRQ {ch.virq}")
            elif ch.state == ECS_PIRQ:
                row["pirq"] = ch.pirq
            if ch.xen_consumer is not None:
                row["xen_consumer"] = True
            if shared is not None:
                row["pending"] = _bit(hv, shared + OFF_EVTCHN_PENDING, ch.port)
                row["masked"] = _bit(hv, shared + OFF_EVTCHN_MASK, ch.port)
            ports.append(row)
    vcpus = []
    for v in d.vcpus:
        info = vcpu_info_maddr(v)
        if info is None:
            continue
        vcpus.append({"vcpu": v.vcpu_id, "upcall_pending": bool(hv.memory.buf[info + OFF_UPCALL_PENDING]),
                      "pending_sel": hv.memory.read_u64(info + OFF_PENDING_SEL)})
    shown, left_out = _bounded(ports)
    bound = sum(1 for p in ports if p["state"] != "reserved")
    return {"domid": d.domid, "ports": shown, "left_out": left_out, "bound": bound,
            "pending": sum(1 for p in ports if p.get("pending")), "vcpus": vcpus}


# --- grants ----------------------------------------------------------------------------------

_GTF_TYPES = {G.GTF_invalid: "invalid", G.GTF_permit_access: "permit_access",
              G.GTF_accept_transfer: "accept_transfer", G.GTF_transitive: "transitive"}
_GTF_BITS = ((G.GTF_readonly, "readonly"), (G.GTF_reading, "reading"), (G.GTF_writing, "writing"),
             (G.GTF_sub_page, "sub_page"), (G.GTF_transfer_committed, "transfer_committed"),
             (G.GTF_transfer_completed, "transfer_completed"))
_GNTMAP_BITS = ((G.GNTMAP_device_map, "device_map"), (G.GNTMAP_host_map, "host_map"),
                (G.GNTMAP_readonly, "readonly"), (G.GNTMAP_application_map, "application_map"),
                (G.GNTMAP_contains_pte, "contains_pte"))


def _grant_flags(flags: int) -> list[str]:
    return [_GTF_TYPES[flags & G.GTF_type_mask]] + [name for bit, name in _GTF_BITS if flags & bit]


def grants(d: "Domain", verbose: bool = False) -> dict:
    """The entries this domain grants (type not invalid, or pinned by a mapper) and the
    maptrack handles it holds on other domains' grants."""
    hv = d.hv
    entries: list[dict] = []
    maps: list[dict] = []
    gt = d.grant_table
    if gt is None:
        raise InspectError(E.EINVAL, f"d{d.domid} has no grant table")
    with hv.gnttab_lock:
        for ref in range(gt.nr_grant_entries()):
            flags, domid = gt.header(ref)
            act = gt.active[ref] if ref < len(gt.active) else None
            pin = act.pin if act is not None else 0
            if flags & G.GTF_type_mask == G.GTF_invalid and not pin:
                continue
            if gt.gt_version == 2:
                status = gt.read_u16(gt.status_maddr(ref))
                flags |= status & (G.GTF_reading | G.GTF_writing)
            entries.append({"ref": ref, "flags": _grant_flags(flags), "domid": domid, "frame": gt.frame(ref),
                            "pin": pin, "mapped_by": act.domid if pin and act is not None else None})
        for handle, m in enumerate(gt.maptrack):
            if not m.flags:
                continue
            maps.append({"handle": handle, "domid": m.domid, "ref": m.ref, "mfn": m.mfn,
                         "flags": [name for bit, name in _GNTMAP_BITS if m.flags & bit],
                         "host_addr": m.host_addr})
        version, nr_frames, max_frames = gt.gt_version, gt.nr_grant_frames, gt.max_grant_frames
        mapped = sum(sum(counts) for counts in gt.mapped.values())
    shown, left_out = _bounded(entries)
    shown_maps, maps_left_out = _bounded(maps)
    return {"domid": d.domid, "version": version, "nr_frames": nr_frames, "max_frames": max_frames,
            "entries": shown, "entries_left_out": left_out, "in_use": len(entries),
            "maptrack": shown_maps, "maptrack_left_out": maps_left_out, "mapped": mapped}


# --- the table of views and the per-domain counters -------------------------------------------

# name -> (builder, needs a virtual address). The channel op and the CLI both take their
# list of hypervisor-side views from here.
VIEWS: dict[str, tuple[Callable[..., dict], bool]] = {
    "pagetables": (lambda d, va, vcpu, verbose: pagetables(d, va, vcpu, verbose), True),
    "frames": (lambda d, va, vcpu, verbose: frames(d, verbose), False),
    "evtchn": (lambda d, va, vcpu, verbose: evtchn(d, verbose), False),
    "grants": (lambda d, va, vcpu, verbose: grants(d, verbose), False),
}


def inspect(d: "Domain", view: str, va: int = 0, vcpu: int = 0, verbose: bool = False) -> dict:
    """One view of `d`; InspectError (with Xen's errno) for a view or argument it cannot answer."""
    entry = VIEWS.get(view)
    if entry is None:
        raise InspectError(E.EINVAL, f"no view {view[:40]!r} (views: {', '.join(VIEWS)})")
    return entry[0](d, va, vcpu, verbose)


def counters(d: "Domain") -> dict[str, int]:
    """Cheap per-domain counters for the domain list (XenAPI data sources read them):
    hypercalls by name, bound ports, grant mappings held, pinned page tables, pending events."""
    hv = d.hv
    table = hv.hypercalls
    result = {f"hypercalls/{table.name(nr)}": n for nr, n in enumerate(d.hypercall_counts) if n}
    with hv.evtchn_lock:
        chans = list(d.evtchn.chans) if d.evtchn is not None else []
        bound = [ch.port for ch in chans if ch.state not in (ECS_FREE, ECS_RESERVED)]
    result["evtchn/bound"] = len(bound)
    shared = d.shared_info_mfn << PAGE_SHIFT if d.shared_info_mfn else None
    result["events/pending"] = sum(1 for port in bound if _bit(hv, shared + OFF_EVTCHN_PENDING, port)) \
        if shared is not None else 0
    with hv.gnttab_lock:
        gt = d.grant_table
        result["grant/mapped"] = sum(sum(c) for c in gt.mapped.values()) if gt is not None else 0
    pinned = pinned_tables(d)
    for level in range(PGT_l1_page_table, PGT_l4_page_table + 1):
        result[f"mm/pinned_l{level}"] = pinned[level]
    return result


def pinned_tables(d: "Domain") -> list[int]:
    """Pinned page tables of `d`, indexed by level (1-4). The pinned flags are a bytearray, so
    `find` (C speed) jumps from pinned frame to pinned frame: the domain list asks every
    0.2 s, and a loop in Python over every machine frame would cost milliseconds."""
    hv = d.hv
    ft = hv.frames
    pinned = [0] * (PGT_l4_page_table + 1)
    with hv.mmu.lock:
        flags, owner, types = ft.pinned, ft.owner, ft.type
        mfn = flags.find(1)
        while mfn >= 0:
            if owner[mfn] == d.domid and PGT_l1_page_table <= types[mfn] <= PGT_l4_page_table:
                pinned[types[mfn]] += 1
            mfn = flags.find(1, mfn + 1)
    return pinned

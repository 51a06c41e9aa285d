"""An independent audit of the PV MMU: recompute from memory what must hold.

`check_invariants(hv) -> list[str]` walks every live page table (a frame
whose page-table type count is non-zero) as the CPU would see it, and
recomputes every frame's reference and type counts from the entries,
the pins, the vCPUs' base pointers and the references hypervisor
subsystems declared (hv.mmu.held_refs). It never calls the MMU's own
reference code. Each violation is one line of text; [] means all is well:

 1. no frame of an L1-L4 (or seg_desc) type is mapped writable anywhere;
 2. every present entry of a validated table references a frame its domain
    may reference, with no disallowed flags, and the hypervisor's L4 slots
    hold the hypervisor's entries;
 3. type counts, reference counts and linear-table counts equal the
    recomputed ones;
 4. each domain's P2M and the M2P agree, and a P2M names only own frames;
 5. no frame of one domain is reachable from another domain's page tables
    except through a recorded foreign (privileged or granted) mapping.
"""
from __future__ import annotations

from array import array
from collections import Counter

from pvhyp.domain import INVALID_MFN
from pvhyp.mm.frametable import DOMID_FREE, DOMID_XEN
from pvhyp.mm.pagetype import (
    _PAGE_PRESENT,
    _PAGE_RW,
    BASE_DISALLOW_MASK,
    PGT_NAMES,
    RO_MPT_SLOT,
    PGT_l1_page_table,
    PGT_l4_page_table,
    PGT_writable_page,
    is_guest_l4_slot,
    l1_disallow_mask,
    pte_mfn,
)


def check_invariants(hv, limit: int = 50) -> list[str]:
    """All violations found (at most `limit`)."""
    mmu = hv.mmu
    f = hv.frames
    n = f.nr_frames
    out: list[str] = []

    def bad(msg: str) -> None:
        if len(out) < limit:
            out.append(msg)

    with mmu.lock:
        exp_count: Counter = Counter(mmu.held_refs)
        exp_type: Counter = Counter(mmu.held_type_refs)
        exp_linear: Counter = Counter()
        foreign_seen: dict[int, Counter] = {d: Counter() for d in hv.domains}
        types, tcounts = f.type, f.type_count
        live = sorted(m for t in range(PGT_l1_page_table, PGT_l4_page_table + 1)
                      for m in _indices(types, t) if tcounts[m] > 0)
        m2p = set(hv.m2p_mfns)
        for mfn in live:
            t = types[mfn]
            owner = f.owner[mfn]
            d = hv.domains.get(owner)
            tag = f"L{t} {mfn:#x} (d{owner})"
            if not f.validated[mfn]:
                bad(f"{tag}: typed with count {tcounts[mfn]} but not validated")
            if d is None:
                bad(f"{tag}: page table not owned by a live domain")
                continue
            if not d.paging:
                bad(f"{tag}: a process domain's frame is a page table")
            entries = mmu.read_table(mfn)
            if t == PGT_l1_page_table:
                disallow = l1_disallow_mask(d)
                for slot, e in enumerate(entries):
                    if not e & _PAGE_PRESENT:
                        continue
                    target = pte_mfn(e)
                    if e & disallow:
                        bad(f"{tag}[{slot}]: disallowed flags in {e:#x}")
                    if target >= n:
                        bad(f"{tag}[{slot}]: maps {target:#x} beyond machine memory")
                        continue
                    rw = bool(e & _PAGE_RW)
                    exp_count[target] += 1
                    if rw:
                        exp_type[target] += 1
                        if types[target] != PGT_writable_page:
                            bad(f"{tag}[{slot}]: maps {PGT_NAMES.get(types[target])} frame {target:#x} writable")
                    towner = f.owner[target]
                    if towner != owner:
                        foreign_seen[owner][target << 1 | rw] += 1
                        if towner == DOMID_XEN and (rw or target not in m2p):
                            bad(f"{tag}[{slot}]: maps hypervisor frame {target:#x}")
                        elif towner == DOMID_FREE:
                            bad(f"{tag}[{slot}]: maps free frame {target:#x}")
                continue
            xen_slots = hv.xen_l4_slots
            for slot, e in enumerate(entries):
                if t == PGT_l4_page_table and not is_guest_l4_slot(slot):
                    want = xen_slots.get(slot, 0)
                    if e != want and not (slot == RO_MPT_SLOT and e == 0):
                        bad(f"{tag}[{slot}]: hypervisor slot holds {e:#x}, not {want:#x}")
                    continue
                if not e & _PAGE_PRESENT:
                    continue
                if e & BASE_DISALLOW_MASK:
                    bad(f"{tag}[{slot}]: disallowed flags in {e:#x}")
                target = pte_mfn(e)
                if target == mfn:
                    if e & _PAGE_RW:
                        bad(f"{tag}[{slot}]: writable self-mapping")
                    continue
                if target >= n or f.owner[target] != owner:
                    bad(f"{tag}[{slot}]: references {target:#x}, not its domain's")
                    continue
                exp_count[target] += 1
                exp_type[target] += 1
                if types[target] == t:
                    if e & _PAGE_RW:
                        bad(f"{tag}[{slot}]: writable linear entry to {target:#x}")
                    exp_linear[mfn] += 1
                    exp_linear[target] -= 1
                elif types[target] != t - 1:
                    bad(f"{tag}[{slot}]: references {PGT_NAMES.get(types[target])} frame {target:#x}")

        for mfn in _indices(f.pinned, 1):
            exp_count[mfn] += 1
            exp_type[mfn] += 1
            if not PGT_l1_page_table <= types[mfn] <= PGT_l4_page_table:
                bad(f"frame {mfn:#x}: pinned as {PGT_NAMES.get(types[mfn])}")
        for d in hv.domains.values():
            for v in d.vcpus:
                for name, mfn in (("guest_table", v.guest_table), ("guest_table_user", v.guest_table_user)):
                    if not mfn:
                        continue
                    exp_count[mfn] += 1
                    exp_type[mfn] += 1
                    if not (0 < mfn < n and types[mfn] == PGT_l4_page_table and f.owner[mfn] == d.domid):
                        bad(f"d{d.domid}v{v.vcpu_id}.{name} = {mfn:#x} is not an L4 of its own")
            if d.mm is not None:
                for mfn in d.mm.process_holds:
                    exp_count[mfn] += 1
                ledger = +d.mm.foreign_maps
                seen = foreign_seen.get(d.domid, Counter())
                if ledger != seen:
                    bad(f"d{d.domid}: foreign-mapping ledger {dict(ledger)} != entries {dict(seen)}")
                granted = +d.mm.granted
                for key, count in seen.items():
                    if not d.is_privileged and count > granted[key >> 1]:
                        bad(f"d{d.domid}: unprivileged mapping of foreign frame {key >> 1:#x}")

        # Compare whole arrays at C speed; look closer only where they differ.
        suspects: set[int] = set()
        for actual, expected in ((f.count, exp_count), (tcounts, exp_type), (f.linear_pt_count, exp_linear)):
            want = array("q", bytes(8 * n))
            for mfn, value in expected.items():
                if 0 <= mfn < n:
                    want[mfn] = value
            if want != actual:
                suspects.update(m for m in range(n) if want[m] != actual[m])
        for mfn in sorted(suspects):
            if f.count[mfn] != exp_count[mfn]:
                bad(f"frame {mfn:#x} (d{f.owner[mfn]}, {PGT_NAMES.get(types[mfn])}): "
                    f"count {f.count[mfn]}, expected {exp_count[mfn]}")
            if tcounts[mfn] != exp_type[mfn]:
                bad(f"frame {mfn:#x} (d{f.owner[mfn]}, {PGT_NAMES.get(types[mfn])}): "
                    f"type count {tcounts[mfn]}, expected {exp_type[mfn]}")
            if f.linear_pt_count[mfn] != exp_linear[mfn]:
                bad(f"frame {mfn:#x}: linear count {f.linear_pt_count[mfn]}, expected {exp_linear[mfn]}")
            if f.owner[mfn] == DOMID_FREE and (f.count[mfn] or tcounts[mfn]):
                bad(f"free frame {mfn:#x} still referenced")

        for d in hv.domains.values():
            for pfn, mfn in enumerate(d.p2m):
                if mfn == INVALID_MFN:
                    continue
                if not 0 <= mfn < n or f.owner[mfn] != d.domid:
                    bad(f"d{d.domid} p2m[{pfn:#x}] = {mfn:#x}, not its frame")
                elif hv.get_m2p(mfn) != pfn:
                    bad(f"d{d.domid} p2m[{pfn:#x}] = {mfn:#x} but m2p[{mfn:#x}] = {hv.get_m2p(mfn):#x}")
    return out


def _indices(buf: bytearray, value: int):
    """Positions of byte `value` in `buf`, found at C speed."""
    find = buf.find
    i = find(value)
    while i >= 0:
        yield i
        i = find(value, i + 1)

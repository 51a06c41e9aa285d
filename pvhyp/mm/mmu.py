"""The PV MMU: the operations behind mmu_update, mmuext_op, update_va_mapping
and memory_op, plus domain set-up and teardown (Xen's relinquish_memory).

`attach(hv)` creates `hv.mmu` (a PVMMU). Other subsystems call:
    hv.mmu.get_page_from_l1e(l1e, l1e_owner, pg_owner) -> 0 | -errno
    hv.mmu.put_page_from_l1e(l1e, l1e_owner)          (grant host mappings)
    hv.mmu.hold_page(mfn, domain, writable) / release_page(mfn, writable)
        a frame the hypervisor itself keeps (and writes, if writable): a
        frame held writable can never become a page table
    hv.mmu.new_guest_cr3(vcpu, mfn) -> 0 | -errno      (the only way to set vcpu.guest_table)
    hv.mmu.new_user_baseptr(vcpu, mfn) -> 0 | -errno   (... and vcpu.guest_table_user)
    hv.mmu.ptwr_emulate(vcpu, addr, data, width, old=None) -> 0 (written) | 1 (cmpxchg
        mismatch) | 2 (refused: bounce the #PF); see pvhyp/mm/ptwr.py
    hv.mmu.lock                                         (hold it around any of these)
Every -errno is the one Xen 4.17 gives in the same situation.
"""
from __future__ import annotations

from abi import errno as E
from abi.x86_pte import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    l1_table_offset,
    l2_table_offset,
    l3_table_offset,
    l4_table_offset,
    pte_mfn,
)
from abi.xen import DOMID_IO, DOMID_SELF, DOMID_XEN, MMU_PT_UPDATE_PRESERVE_AD, VMASST_TYPE_m2p_strict
from abi.xen_x86_64 import INVALID_M2P_ENTRY
from pvhyp.domain import INVALID_MFN
from pvhyp.guest_access import handle_ok
from pvhyp.mm import ptwr
from pvhyp.mm.flush import flush_tlb
from pvhyp.mm.frametable import DOMID_ORPHAN, OutOfMemory
from pvhyp.mm.pagetype import (
    RO_MPT_SLOT,
    DomainMM,
    FrameRefs,
    PGT_l1_page_table,
    PGT_l4_page_table,
    PGT_none,
    PGT_root_page_table,
    PGT_writable_page,
    PseudoDomain,
)


class PVMMU(FrameRefs):
    def __init__(self, hv):
        super().__init__(hv)
        self.dom_io = PseudoDomain(DOMID_IO)
        # The M2P is shared read-only with privileged guests: a permanent
        # PGT_none type reference keeps it from ever being mapped writable.
        f = self.frames
        for mfn in hv.m2p_mfns:
            f.type[mfn] = PGT_none
            f.type_count[mfn] = 1
            f.count[mfn] = 1
            self.held_refs[mfn] += 1
            self.held_type_refs[mfn] += 1

    # ------------------------------------------------------------- domains
    def domain_created(self, d) -> None:
        d.mm = DomainMM(d)
        # The hypervisor writes shared_info: it stays a writable page for good.
        self.hold_page(d.shared_info_mfn, d, writable=True)

    def get_pg_owner(self, curr, domid: int):
        """Xen's get_pg_owner: domain, or None (-ESRCH); callers then ask the policy (hv.xsm)."""
        domid &= 0xFFFF
        if domid == DOMID_SELF:
            return curr
        if domid == curr.domid:
            return None
        if domid == DOMID_IO:
            return self.dom_io
        if domid == DOMID_XEN:
            return self.dom_xen
        return self.hv.domains.get(domid)

    # --------------------------------------------------------- mmu_update
    def mmu_normal_update(self, v, pt_owner, pg_owner, ptr: int, val: int, cmd: int) -> tuple[int, bool]:
        """One MMU_NORMAL_PT_UPDATE / PRESERVE_AD / NO_TRANSLATE; (rc, a table above L1 changed)."""
        gmfn = ptr >> 12
        if not self.get_page_from_mfn(gmfn, pt_owner):
            return -E.EINVAL, False
        f = self.frames
        rc = -E.EINVAL
        linear_changed = False
        preserve_ad = cmd == MMU_PT_UPDATE_PRESERVE_AD
        try:
            if f.validated[gmfn] and f.type_count[gmfn]:         # page_lock() succeeds
                t = f.type[gmfn]
                if t == PGT_l1_page_table:
                    rc = self.mod_l1_entry(ptr, val, pt_owner, pg_owner, preserve_ad)
                elif PGT_l1_page_table < t <= PGT_l4_page_table:
                    if pg_owner is pt_owner:
                        rc = self.mod_lN_entry(ptr, val, gmfn, t, pt_owner, preserve_ad)
                        linear_changed = rc == 0
                elif t == PGT_writable_page:
                    self.write_entry(ptr, val)
                    rc = 0
            elif self.get_page_type(gmfn, PGT_writable_page) == 0:
                self.write_entry(ptr, val)
                self.put_page_type(gmfn)
                rc = 0
        finally:
            self.put_page(gmfn)
        return rc, linear_changed

    def machphys_update(self, d, pt_owner, pg_owner, mfn: int, gpfn: int) -> int:
        if d is not pt_owner:
            return -E.EPERM
        if not self.get_page_from_mfn(mfn, pg_owner):
            return -E.EINVAL
        self.set_gpfn_from_mfn(pg_owner, mfn, gpfn)
        self.put_page(mfn)
        return 0

    def set_gpfn_from_mfn(self, d, mfn: int, gpfn: int) -> None:
        """Record mfn -> gpfn in the M2P and keep the hypervisor's P2M its inverse."""
        p2m = d.p2m                 # None for DOMID_IO / DOMID_XEN
        if p2m is not None:
            old = self.hv.get_m2p(mfn)
            if old < len(p2m) and p2m[old] == mfn:
                p2m[old] = INVALID_MFN
            if gpfn < max(len(p2m), d.max_pages):
                if gpfn >= len(p2m):
                    p2m.extend([INVALID_MFN] * (gpfn + 1 - len(p2m)))
                p2m[gpfn] = mfn
        self.hv.set_m2p(mfn, gpfn)

    # ----------------------------------------------------------- mmuext_op
    def pin_table(self, currd, pg_owner, mfn: int, type_: int) -> int:
        if not self.get_page_from_mfn(mfn, pg_owner):
            return -E.EINVAL
        rc = self.get_page_type(mfn, type_)
        if rc:
            self.put_page(mfn)
            return rc
        f = self.frames
        if f.pinned[mfn]:
            self.put_page_and_type(mfn)
            return -E.EINVAL
        f.pinned[mfn] = 1
        if pg_owner is not currd and pg_owner.is_dying:
            f.pinned[mfn] = 0
            self.put_page_and_type(mfn)
        elif self.hv.trace.enabled:     # the timeline's pinned-tables counter (PGT_lN_page_table = N)
            self.hv.trace.record("mm", pg_owner.domid, -1, op="pin", level=type_, mfn=mfn)
        return 0

    def unpin_table(self, pg_owner, mfn: int) -> int:
        if not self.get_page_from_mfn(mfn, pg_owner):
            return -E.EINVAL
        f = self.frames
        if not f.pinned[mfn]:
            self.put_page(mfn)
            return -E.EINVAL
        f.pinned[mfn] = 0
        if self.hv.trace.enabled:
            self.hv.trace.record("mm", pg_owner.domid, -1, op="unpin", level=f.type[mfn], mfn=mfn)
        self.put_page_and_type(mfn)
        self.put_page(mfn)
        return 0

    def new_guest_cr3(self, v, mfn: int) -> int:
        """MMUEXT_NEW_BASEPTR: switch the kernel page table, moving the L4 type reference."""
        d = v.domain
        old = v.guest_table
        if old == mfn:
            flush_tlb(d, [v])
            return 0
        rc = self.get_page_and_type_from_mfn(mfn, PGT_root_page_table, d)
        if rc:
            return rc
        self.set_ldt(v, 0, 0)
        if not d.vm_assist >> VMASST_TYPE_m2p_strict & 1:
            self.fill_ro_mpt(mfn)
        v.guest_table = mfn
        flush_tlb(d, [v])
        if old:
            self.put_page_and_type(old)
        return 0

    def new_user_baseptr(self, v, mfn: int) -> int:
        d = v.domain
        old = v.guest_table_user
        if old == mfn:
            return 0
        if mfn:
            rc = self.get_page_and_type_from_mfn(mfn, PGT_root_page_table, d)
            if rc:
                return rc
            if d.vm_assist >> VMASST_TYPE_m2p_strict & 1:
                self.write_entry((mfn << 12) + RO_MPT_SLOT * 8, 0)
        v.guest_table_user = mfn
        flush_tlb(d, [v])
        if old:
            self.put_page_and_type(old)
        return 0

    def fill_ro_mpt(self, mfn: int) -> None:
        entry = self.hv.xen_l4_slots.get(RO_MPT_SLOT, 0)
        maddr = (mfn << 12) + RO_MPT_SLOT * 8
        if entry and not self.read_entry(maddr):
            self.write_entry(maddr, entry)

    def set_ldt(self, v, base: int, ents: int) -> None:
        mm = v.domain.mm
        if mm is not None:
            if ents:
                mm.ldt[v.vcpu_id] = (base, ents)
            else:
                mm.ldt.pop(v.vcpu_id, None)

    def clear_page(self, pg_owner, mfn: int) -> int:
        if not self.get_page_from_mfn(mfn, pg_owner):
            return -E.EINVAL
        if self.get_page_type(mfn, PGT_writable_page):
            self.put_page(mfn)
            return -E.EINVAL
        self.memory.scrub(mfn)
        self.put_page_and_type(mfn)
        return 0

    def copy_page(self, pg_owner, dst: int, src: int) -> int:
        if not self.get_page_from_mfn(src, pg_owner):
            return -E.EINVAL
        if not self.get_page_from_mfn(dst, pg_owner):
            self.put_page(src)
            return -E.EINVAL
        if self.get_page_type(dst, PGT_writable_page):
            self.put_page(src)
            self.put_page(dst)
            return -E.EINVAL
        buf = self.memory.buf
        buf[dst << 12:(dst + 1) << 12] = buf[src << 12:(src + 1) << 12]
        self.put_page_and_type(dst)
        self.put_page(src)
        return 0

    def ptwr_emulate(self, vcpu, addr: int, data, width: int, old=None, cr2=None) -> int:
        """The CPU engine's entry for a store to a page table (data: bytes or int)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = int.from_bytes(bytes(data), "little")
        if isinstance(old, (bytes, bytearray, memoryview)):
            old = int.from_bytes(bytes(old), "little")
        return ptwr.ptwr_emulate(vcpu, addr, data, width, old=old, cr2=cr2).status

    # --------------------------------------------------- update_va_mapping
    def map_guest_l1e(self, v, va: int):
        """Machine address of the L1 entry mapping `va` in the current kernel table, or None."""
        if not handle_ok(v.domain, va) or not v.domain.paging:
            return None
        table = v.guest_table
        nr = self.frames.nr_frames
        for table_offset in (l4_table_offset, l3_table_offset, l2_table_offset):
            if not 0 < table < nr:
                return None
            e = self.read_entry((table << 12) + table_offset(va) * 8)
            if e & (_PAGE_PRESENT | _PAGE_PSE) != _PAGE_PRESENT:
                return None
            table = pte_mfn(e)
        if not 0 < table < nr:
            return None
        return (table << 12) + l1_table_offset(va) * 8

    def update_va_mapping(self, v, va: int, val: int, pg_owner) -> int:
        """__do_update_va_mapping up to (not including) the flush."""
        d = v.domain
        if val & _PAGE_PRESENT:
            rc = self.hv.xsm.update_va_mapping(d, pg_owner)
            if rc:
                return rc
        pl1e = self.map_guest_l1e(v, va)
        if pl1e is None:
            return -E.EINVAL
        gl1mfn = pl1e >> 12
        if not self.get_page_from_mfn(gl1mfn, d):
            return -E.EINVAL
        f = self.frames
        try:
            if not (f.validated[gl1mfn] and f.type_count[gl1mfn]) or f.type[gl1mfn] != PGT_l1_page_table:
                return -E.EINVAL
            return self.mod_l1_entry(pl1e, val, d, pg_owner, False)
        finally:
            self.put_page(gl1mfn)

    # ------------------------------------------------------------ memory_op
    def alloc_domheap_pages(self, d, order: int) -> int | None:
        """2**order frames for `d` (contiguous), within its max_pages; first mfn or None."""
        n = 1 << order
        if d.tot_pages + n > d.max_pages:
            return None
        try:
            first = self.frames.alloc(d.domid, 1)[0] if n == 1 else self.frames.alloc_contiguous(d.domid, n)
        except OutOfMemory:
            return None
        d.tot_pages += n
        return first

    def guest_remove_page(self, d, gmfn: int) -> int:
        if not 0 <= gmfn < self.frames.nr_frames:
            return -E.EINVAL
        if not self.get_page(gmfn, d):
            return -E.ENXIO
        f = self.frames
        pfn = self.hv.get_m2p(gmfn)
        p2m = d.p2m
        if pfn < len(p2m) and p2m[pfn] == gmfn:
            p2m[pfn] = INVALID_MFN
        if f.allocated[gmfn]:
            f.allocated[gmfn] = 0
            if not d.paging:
                # A process keeps its memory mapped: the frame stays out of the
                # heap, referenced, until the domain dies.
                d.mm.process_holds.add(gmfn)
                return 0
        self.put_page(gmfn)
        return 0

    # ------------------------------------------------------------- teardown
    def relinquish(self, d) -> None:
        """Drop every type and reference `d` holds so all its frames can be freed
        (Xen's domain_relinquish_resources). Frames another domain still maps
        survive as orphans until that mapping goes."""
        with self.lock:
            f = self.frames
            if d.mm is not None:
                self.release_page(d.shared_info_mfn, writable=True)
                for mfn in d.mm.process_holds:
                    self.put_page(mfn)
                d.mm.process_holds.clear()
            for v in d.vcpus:
                for attr in ("guest_table", "guest_table_user"):
                    mfn = getattr(v, attr)
                    setattr(v, attr, 0)
                    if mfn and f.owner[mfn] == d.domid and f.type_count[mfn] > 0:
                        self.put_page_and_type(mfn)
            mine = [mfn for mfn in range(f.nr_frames) if f.owner[mfn] == d.domid]
            for mfn in mine:
                if f.pinned[mfn]:
                    f.pinned[mfn] = 0
                    self.put_page_and_type(mfn)
            # What is left typed is held by cycles (linear entries) among d's own
            # tables; only their references to other domains' frames matter now.
            for mfn in mine:
                if f.type[mfn] == PGT_l1_page_table and f.type_count[mfn] > 0 and f.validated[mfn]:
                    f.validated[mfn] = 0
                    for e in self.read_table(mfn):
                        if e & _PAGE_PRESENT and pte_mfn(e) < f.nr_frames and f.owner[pte_mfn(e)] != d.domid:
                            self.put_page_from_l1e(e, d)
            external, external_rw = self.external_refs(d)
            for mfn in mine:
                f.pinned[mfn] = 0
                f.validated[mfn] = 0
                f.linear_pt_count[mfn] = 0
                f.allocated[mfn] = 0
                n = external.get(mfn, 0)
                rw = external_rw.get(mfn, 0)
                f.count[mfn] = n
                f.type[mfn] = PGT_writable_page if rw else PGT_none
                f.type_count[mfn] = rw
                f.validated[mfn] = 1 if rw else 0
                if n:
                    self.hv.set_m2p(mfn, INVALID_M2P_ENTRY)
                    f.owner[mfn] = DOMID_ORPHAN
            if d.mm is not None:
                d.mm.foreign_maps.clear()
                d.mm.granted.clear()
                d.mm.ldt.clear()

    def external_refs(self, d) -> tuple[dict, dict]:
        """References others hold on `d`'s frames (other domains' L1 entries, other
        subsystems' holds): (general, writable) per mfn."""
        owner = self.frames.owner
        general = {mfn: n for mfn, n in self.held_refs.items() if owner[mfn] == d.domid}
        writable = {mfn: n for mfn, n in self.held_type_refs.items() if owner[mfn] == d.domid}
        for other in self.hv.domains.values():
            if other is d or other.mm is None:
                continue
            for key, n in other.mm.foreign_maps.items():
                mfn = key >> 1
                if owner[mfn] == d.domid:
                    general[mfn] = general.get(mfn, 0) + n
                    if key & 1:
                        writable[mfn] = writable.get(mfn, 0) + n
        return general, writable


def attach(hv) -> None:
    mmu = PVMMU(hv)
    hv.mmu = mmu

    def created(d) -> None:
        with mmu.lock:
            mmu.domain_created(d)

    hv.domain_create_hooks.append(created)
    hv.domain_destroy_hooks.append(mmu.relinquish)

"""Page types and reference counts: Xen's get_page_type / put_page_type world.

A frame's type says what the hypervisor allows it to be used as. A frame is
typed as a page table (L1..L4) only after every entry in it has been
validated (promote_lN_table, Xen's alloc_lN_table), and it keeps the type
while its type count is non-zero; a writable mapping holds a
PGT_writable_page type reference, so a page-table frame can never be mapped
writable and a writably mapped frame can never become a page table. The
last put of a page-table type devalidates it (demote_lN_table), dropping the
references its entries held.

Everything here runs under `FrameRefs.lock`; there is no preemption and no
partial validation: a failed promotion is rolled back before returning.

Names follow xen/arch/x86/mm.c so the two can be read side by side.
"""
from __future__ import annotations

import struct
import threading
from collections import Counter
from typing import TYPE_CHECKING

from abi import errno as E
from abi.x86_pte import (
    _PAGE_ACCESSED,
    _PAGE_AVAIL,
    _PAGE_DIRTY,
    _PAGE_GLOBAL,
    _PAGE_NX,
    _PAGE_PAT,
    _PAGE_PCD,
    _PAGE_PRESENT,
    _PAGE_PWT,
    _PAGE_RW,
    _PAGE_USER,
    PAGE_SHIFT,
    PTE_FRAME_MASK,
    l4_table_offset,
    pte_mfn,
)
from abi.xen_x86_64 import HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, INVALID_M2P_ENTRY, MACH2PHYS_VIRT_START
from pvhyp.mm.flush import flush_tlb
from pvhyp.mm.frametable import DOMID_FREE, DOMID_XEN

if TYPE_CHECKING:
    from pvhyp.domain import VCPU
    from pvhyp.hypervisor import Hypervisor

# --- page types (Xen's PGT_*, without the shift) ---
PGT_none = 0
PGT_l1_page_table = 1
PGT_l2_page_table = 2
PGT_l3_page_table = 3
PGT_l4_page_table = 4
PGT_seg_desc_page = 5
PGT_writable_page = 7
PGT_root_page_table = PGT_l4_page_table
PGT_NAMES = {0: "none", 1: "L1", 2: "L2", 3: "L3", 4: "L4", 5: "seg_desc", 7: "writable"}

# --- Xen's own PTE bit, cache attributes, the hypervisor's L4 slots ---
_PAGE_GUEST_KERNEL = 1 << 52          # Xen's marker for "guest kernel mapping" (ignored by the CPU)
PAGE_CACHE_ATTRS = _PAGE_PAT | _PAGE_PCD | _PAGE_PWT
ROOT_PAGETABLE_FIRST_XEN_SLOT = l4_table_offset(HYPERVISOR_VIRT_START)      # 256
ROOT_PAGETABLE_LAST_XEN_SLOT = l4_table_offset(HYPERVISOR_VIRT_END - 1)     # 271
RO_MPT_SLOT = l4_table_offset(MACH2PHYS_VIRT_START)

# Xen computes masks on 24-bit "flags" (pte bits 0-11 and 52-63); here they are
# kept as masks on the PTE itself. base_disallow_mask is everything but
# P/RW/US/A/D/AVAIL/AVAIL_HIGH/NX: PWT, PCD, PSE(PAT), G.
_AVAIL_HIGH = 0x7FF << 52
BASE_DISALLOW_MASK = (0xFFF & ~(_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED
                                | _PAGE_DIRTY | _PAGE_AVAIL))
L1_DISALLOW_MASK = BASE_DISALLOW_MASK & ~_PAGE_GLOBAL          # release build: _PAGE_GNTTAB == 0
# L2, L3 (64-bit PV) and L4 entries are checked against BASE_DISALLOW_MASK itself.
# PTE bits a guest may change without the entry being re-validated.
FASTPATH_FLAG_WHITELIST = (_PAGE_NX | _AVAIL_HIGH | _PAGE_AVAIL | _PAGE_GLOBAL
                           | _PAGE_DIRTY | _PAGE_ACCESSED | _PAGE_USER)
_FASTPATH_COMPARE = PTE_FRAME_MASK | (0xFFF & ~FASTPATH_FLAG_WHITELIST) | _PAGE_PRESENT

_TABLE = struct.Struct("<512Q")


def l1_disallow_mask(d) -> int:
    """Domains with I/O rights (here: privileged ones) may choose cache attributes."""
    return L1_DISALLOW_MASK & ~PAGE_CACHE_ATTRS if d.is_privileged else L1_DISALLOW_MASK


def is_guest_l4_slot(slot: int) -> bool:
    return slot < ROOT_PAGETABLE_FIRST_XEN_SLOT or slot > ROOT_PAGETABLE_LAST_XEN_SLOT


def adjust_guest_l1e(e: int) -> int:
    """64-bit PV kernels run in ring 3: their mappings get _PAGE_USER, user ones _PAGE_GLOBAL."""
    if e & _PAGE_PRESENT:
        if not e & _PAGE_USER:
            e |= _PAGE_GUEST_KERNEL | _PAGE_USER
        if not e & _PAGE_GUEST_KERNEL:
            e |= _PAGE_GLOBAL | _PAGE_USER
    return e


def adjust_guest_l2e(e: int) -> int:
    return e | _PAGE_USER if e & _PAGE_PRESENT else e


def adjust_guest_l4e(e: int) -> int:
    return e | _PAGE_ACCESSED | _PAGE_USER if e & _PAGE_PRESENT else e


class PseudoDomain:
    """DOMID_XEN / DOMID_IO as page owners (Xen's dom_xen, dom_io): no vCPUs, no rights."""

    is_privileged = False
    is_dying = False
    paging = True
    vm_assist = 0
    p2m = None                  # no pseudo-physical address space

    def __init__(self, domid: int):
        self.domid = domid
        self.vcpus: list[VCPU] = []
        self.mm = None

    def __repr__(self) -> str:
        return f"<PseudoDomain {self.domid:#x}>"


class DomainMM:
    """Per-domain MMU state (domain.mm)."""

    def __init__(self, domain):
        self.domain = domain
        # Foreign frames this domain's L1 entries reference: (mfn << 1 | rw) -> entries.
        # Only get_page_from_l1e/put_page_from_l1e change it; the checker audits it.
        self.foreign_maps: Counter = Counter()
        # Of those, frames mapped through a grant (mfn -> entries): how an
        # unprivileged domain may hold a foreign mapping at all.
        self.granted: Counter = Counter()
        # Per-vCPU LDT set by MMUEXT_SET_LDT: vcpu_id -> (linear base, entries); read by the CPU engine.
        self.ldt: dict[int, tuple[int, int]] = {}
        # A process domain's frames given back by decrease_reservation: still
        # mapped in its process, so referenced until it dies.
        self.process_holds: set[int] = set()
        # The pseudo-physical memory map the toolstack set (XENMEM_set_memory_map): raw e820 entries.
        self.e820 = b""


class FrameRefs:
    """Type and reference counting over the frame table (one per hypervisor: hv.mmu)."""

    def __init__(self, hv: "Hypervisor"):
        self.hv = hv
        self.memory = hv.memory
        self.frames = hv.frames
        self.lock = threading.RLock()
        self.dom_xen = PseudoDomain(DOMID_XEN)
        # References held by hypervisor subsystems outside page tables (shared_info,
        # grant frames, vcpu_info, M2P...): mfn -> count, and writable type refs.
        self.held_refs: Counter = Counter()
        self.held_type_refs: Counter = Counter()
        # Validators for PGT_seg_desc_page, set by whoever owns descriptor tables.
        self.validate_segdesc_page = lambda mfn: 0

    # ------------------------------------------------------------------ lookup
    def domain_of(self, domid: int):
        if domid == DOMID_XEN:
            return self.dom_xen
        return self.hv.domains.get(domid)

    def read_table(self, mfn: int) -> tuple:
        return _TABLE.unpack_from(self.memory.buf, mfn << 12)

    def write_table(self, mfn: int, entries) -> None:
        """Entry by entry, changed ones only: other vCPUs may be walking this table."""
        self.memory.words.store_u64_changed(mfn << 12, entries)

    def read_entry(self, maddr: int) -> int:
        return self.memory.read_u64(maddr)

    def write_entry(self, maddr: int, value: int) -> None:
        self.memory.write_u64(maddr, value)

    # ------------------------------------------------------- general references
    def page_get_owner_and_reference(self, mfn: int):
        """Take a general reference; the owner's domid, or None if the frame is not in use."""
        f = self.frames
        if not f.allocated[mfn] and f.count[mfn] <= 0:
            return None
        owner = f.owner[mfn]
        if owner == DOMID_FREE or (owner == DOMID_XEN and not self.held_refs.get(mfn)):
            return None      # the hypervisor's own frames, unless shared (the M2P)
        f.count[mfn] += 1
        return owner

    def get_page(self, mfn: int, d) -> bool:
        owner = self.page_get_owner_and_reference(mfn)
        if owner == d.domid:
            return True
        if owner is not None:
            self.put_page(mfn)
        return False

    def get_page_from_mfn(self, mfn: int, d) -> bool:
        return 0 <= mfn < self.frames.nr_frames and self.get_page(mfn, d)

    def put_page(self, mfn: int) -> None:
        f = self.frames
        f.count[mfn] -= 1
        if f.count[mfn] == 0 and not f.allocated[mfn] and f.owner[mfn] != DOMID_FREE:
            self.free_domain_page(mfn)

    def free_domain_page(self, mfn: int) -> None:
        """The last reference to a page its owner gave up: back to the heap."""
        owner = self.frames.owner[mfn]
        d = self.hv.domains.get(owner)
        if d is not None:
            d.tot_pages -= 1
            flush_tlb(d)
        self.hv.set_m2p(mfn, INVALID_M2P_ENTRY)
        self.frames.free(mfn)

    # ----------------------------------------------------------- type references
    def get_page_type(self, mfn: int, type_: int) -> int:
        """Xen's _get_page_type: 0, or -EINVAL (wrong type, failed validation...)."""
        f = self.frames
        tc = f.type_count[mfn]
        if tc == 0:
            if f.type[mfn] != type_:
                old = f.type[mfn]
                f.type[mfn] = type_
                f.validated[mfn] = 0
                if old == PGT_writable_page:
                    # A stale writable TLB entry (in any domain that mapped the
                    # frame) must not outlive the frame's writable life.
                    for d in list(self.hv.domains.values()):
                        flush_tlb(d)
                elif old != PGT_none:
                    self._flush_owner(mfn)
        elif f.type[mfn] != type_:
            return -E.EINVAL
        elif not f.validated[mfn]:
            # Only seen mid-validation, i.e. a table reaching itself at the wrong level.
            return -E.EINVAL
        f.type_count[mfn] = tc + 1
        if f.validated[mfn]:
            return 0
        if type_ == PGT_writable_page:
            f.validated[mfn] = 1
            return 0
        rc = self.validate_page(mfn, type_)
        if rc:
            f.type_count[mfn] = 0
            f.type[mfn] = PGT_none
            f.validated[mfn] = 0
        else:
            f.validated[mfn] = 1
        return rc

    def put_page_type(self, mfn: int, ptpg: int | None = None) -> None:
        """Xen's _put_page_type; `ptpg` is the table whose entry held the reference."""
        f = self.frames
        t = f.type[mfn]
        linear = ptpg is not None and f.type[ptpg] == t
        if f.type_count[mfn] == 1 and PGT_l1_page_table <= t <= PGT_l4_page_table and f.validated[mfn]:
            f.validated[mfn] = 0
            self.devalidate_page(mfn, t)
            self._flush_owner(mfn)
        f.type_count[mfn] -= 1
        if linear and ptpg is not None:     # linear implies ptpg; mypy cannot see it through the bool
            f.linear_pt_count[mfn] += 1       # dec_linear_uses
            f.linear_pt_count[ptpg] -= 1      # dec_linear_entries

    def get_page_and_type_from_mfn(self, mfn: int, type_: int, d) -> int:
        if not self.get_page_from_mfn(mfn, d):
            return -E.EINVAL
        rc = self.get_page_type(mfn, type_)
        if rc:
            self.put_page(mfn)
        return rc

    def put_page_and_type(self, mfn: int, ptpg: int | None = None) -> None:
        self.put_page_type(mfn, ptpg)
        self.put_page(mfn)

    def _flush_owner(self, mfn: int) -> None:
        d = self.hv.domains.get(self.frames.owner[mfn])
        if d is not None:
            flush_tlb(d)

    # ------------------------------------------------------------ validation
    def validate_page(self, mfn: int, type_: int) -> int:
        d = self.domain_of(self.frames.owner[mfn])
        if d is None or not d.paging:
            # A process domain's memory is mapped writable in its process for
            # good: none of it can be trusted to stay a validated table.
            return -E.EINVAL
        if type_ == PGT_l1_page_table:
            return self.promote_l1_table(mfn, d)
        if type_ == PGT_seg_desc_page:
            return self.validate_segdesc_page(mfn)
        return self.promote_table(mfn, type_, d)

    def devalidate_page(self, mfn: int, type_: int) -> None:
        d = self.domain_of(self.frames.owner[mfn])
        entries = self.read_table(mfn)
        if type_ == PGT_l1_page_table:
            for e in entries:
                if e & _PAGE_PRESENT:
                    self.put_page_from_l1e(e, d)
            return
        for slot in range(511, -1, -1):
            e = entries[slot]
            if e & _PAGE_PRESENT and (type_ != PGT_l4_page_table or is_guest_l4_slot(slot)):
                self.put_page_from_lNe(e, mfn)

    def promote_l1_table(self, mfn: int, d) -> int:
        entries = list(self.read_table(mfn))
        for i, e in enumerate(entries):
            if e & _PAGE_PRESENT:
                rc = self.get_page_from_l1e(e, d, d)
                if rc < 0:
                    for j in range(i):
                        self.put_page_from_l1e(entries[j], d)
                    self.write_table(mfn, entries)
                    return rc
                entries[i] = adjust_guest_l1e(e)
        self.write_table(mfn, entries)
        return 0

    def promote_table(self, mfn: int, type_: int, d) -> int:
        """promote_l2/l3/l4_table: take a reference on every entry's next level."""
        entries = list(self.read_table(mfn))
        adjust = adjust_guest_l4e if type_ == PGT_l4_page_table else adjust_guest_l2e
        done: list[int] = []
        for i, e in enumerate(entries):
            if type_ == PGT_l4_page_table and not is_guest_l4_slot(i):
                continue
            if not e & _PAGE_PRESENT:
                continue
            rc = self.get_page_from_lNe(e, type_, mfn, d)
            if rc < 0:
                for j in reversed(done):
                    self.put_page_from_lNe(entries[j], mfn)
                self.write_table(mfn, entries)
                return rc
            entries[i] = adjust(e)
            done.append(i)
        if type_ == PGT_l4_page_table:
            self.init_xen_l4_slots(entries, d)
        self.write_table(mfn, entries)
        return 0

    def init_xen_l4_slots(self, entries: list, d) -> None:
        """Slots 256-271 are the hypervisor's: overwrite whatever the guest left there."""
        slots = self.hv.xen_l4_slots
        strict = bool(d.vm_assist >> 32 & 1)     # VMASST_TYPE_m2p_strict
        for slot in range(ROOT_PAGETABLE_FIRST_XEN_SLOT, ROOT_PAGETABLE_LAST_XEN_SLOT + 1):
            entries[slot] = slots.get(slot, 0)
        if not strict:
            # Xen fills the read-only M2P slot when the table becomes a base pointer (fill_ro_mpt).
            entries[RO_MPT_SLOT] = 0

    # ------------------------------------------------- entry-level references
    def get_page_from_l1e(self, l1e: int, l1e_owner, pg_owner, grant: bool = False) -> int:
        """Reference what a present L1 entry maps: 0 or -errno (Xen's get_page_from_l1e).

        `l1e_owner` owns the table, `pg_owner` the frame it is meant to map
        (the foreign domain of mmu_update, the granting domain of a grant map:
        pass grant=True then, and to the matching put_page_from_l1e).
        """
        if not l1e & _PAGE_PRESENT:
            return 0
        if l1e & l1_disallow_mask(l1e_owner):
            return -E.EINVAL
        mfn = pte_mfn(l1e)
        if mfn >= self.frames.nr_frames:
            # MMIO space: no domain here has I/O memory rights.
            return -E.EINVAL if mfn == PTE_FRAME_MASK >> PAGE_SHIFT else -E.EPERM
        real = self.page_get_owner_and_reference(mfn)
        if real is None:
            return -E.EBUSY
        if real != pg_owner.domid:
            real_d = self.domain_of(real)
            if (real_d is None or pg_owner is l1e_owner
                    or self.hv.xsm.priv_mapping(pg_owner, real_d)):
                self.put_page(mfn)
                return -E.EBUSY
            pg_owner = real_d
        if real == DOMID_XEN and (l1e & _PAGE_RW or mfn not in self.hv.m2p_mfns):
            self.put_page(mfn)
            return -E.EBUSY
        rw = bool(l1e & _PAGE_RW)
        if rw and self.get_page_type(mfn, PGT_writable_page):
            self.put_page(mfn)
            return -E.EBUSY
        if real != l1e_owner.domid and l1e_owner.mm is not None:
            l1e_owner.mm.foreign_maps[mfn << 1 | rw] += 1
            if grant:
                l1e_owner.mm.granted[mfn] += 1
        return 0

    def put_page_from_l1e(self, l1e: int, l1e_owner, grant: bool = False) -> None:
        if not l1e & _PAGE_PRESENT:
            return
        mfn = pte_mfn(l1e)
        if mfn >= self.frames.nr_frames:
            return
        rw = bool(l1e & _PAGE_RW)
        if self.frames.owner[mfn] != l1e_owner.domid and l1e_owner.mm is not None:
            key = mfn << 1 | rw
            fm = l1e_owner.mm.foreign_maps
            fm[key] -= 1
            if not fm[key]:
                del fm[key]
            if grant:
                l1e_owner.mm.granted[mfn] -= 1
                if not l1e_owner.mm.granted[mfn]:
                    del l1e_owner.mm.granted[mfn]
        if rw:
            self.put_page_and_type(mfn)
        else:
            self.put_page(mfn)

    def get_page_from_lNe(self, e: int, level_type: int, table_mfn: int, d) -> int:
        """get_page_from_l2e/l3e/l4e: the next level down, or a read-only linear entry."""
        if e & BASE_DISALLOW_MASK:
            return -E.EINVAL
        mfn = pte_mfn(e)
        rc = self.get_page_and_type_from_mfn(mfn, level_type - 1, d)
        if rc == -E.EINVAL and self.get_linear_pagetable(e, level_type, table_mfn, d):
            rc = 0
        return rc

    def get_linear_pagetable(self, e: int, level_type: int, table_mfn: int, d) -> bool:
        """A read-only entry mapping a table of its own level (recursive mapping)."""
        if e & _PAGE_RW:
            return False
        mfn = pte_mfn(e)
        if mfn == table_mfn:
            return True              # a table mapping itself takes no reference
        f = self.frames
        if f.owner[table_mfn] != d.domid or not self.get_page_from_mfn(mfn, d):
            return False
        # The table may hold linear entries only if it is not itself used
        # linearly, and the target may be used linearly only if it holds none.
        if f.linear_pt_count[table_mfn] < 0 or f.linear_pt_count[mfn] > 0:
            self.put_page(mfn)
            return False
        if f.type[mfn] != level_type or not f.validated[mfn] or f.type_count[mfn] == 0:
            self.put_page(mfn)
            return False
        f.linear_pt_count[table_mfn] += 1
        f.linear_pt_count[mfn] -= 1
        f.type_count[mfn] += 1
        return True

    def put_page_from_lNe(self, e: int, table_mfn: int) -> None:
        mfn = pte_mfn(e)
        if not e & _PAGE_PRESENT or mfn == table_mfn:
            return
        self.put_page_type(mfn, ptpg=table_mfn)
        self.put_page(mfn)

    # --------------------------------------------------- single-entry updates
    def mod_l1_entry(self, maddr: int, nl1e: int, pt_dom, pg_dom, preserve_ad: bool) -> int:
        ol1e = self.read_entry(maddr)
        if nl1e & _PAGE_PRESENT:
            if nl1e & l1_disallow_mask(pt_dom):
                return -E.EINVAL
            nl1e = adjust_guest_l1e(nl1e)
            if not (ol1e ^ nl1e) & _FASTPATH_COMPARE:
                self._update_entry(maddr, ol1e, nl1e, preserve_ad)
                return 0
            rc = self.get_page_from_l1e(nl1e, pt_dom, pg_dom)
            if rc:
                return rc
        self._update_entry(maddr, ol1e, nl1e, preserve_ad)
        self.put_page_from_l1e(ol1e, pt_dom)
        return 0

    def mod_lN_entry(self, maddr: int, ne: int, table_mfn: int, level_type: int, d,
                     preserve_ad: bool) -> int:
        """mod_l2_entry / mod_l3_entry / mod_l4_entry."""
        slot = (maddr & 0xFFF) >> 3
        if level_type == PGT_l4_page_table and not is_guest_l4_slot(slot):
            return -E.EINVAL
        oe = self.read_entry(maddr)
        if ne & _PAGE_PRESENT:
            if ne & BASE_DISALLOW_MASK:
                return -E.EINVAL
            ne = adjust_guest_l4e(ne) if level_type == PGT_l4_page_table else adjust_guest_l2e(ne)
            if not (oe ^ ne) & _FASTPATH_COMPARE:
                self._update_entry(maddr, oe, ne, preserve_ad)
                return 0
            rc = self.get_page_from_lNe(ne, level_type, table_mfn, d)
            if rc < 0:
                return rc
        self._update_entry(maddr, oe, ne, preserve_ad)
        self.put_page_from_lNe(oe, table_mfn)
        return 0

    def _update_entry(self, maddr: int, old: int, new: int, preserve_ad: bool) -> None:
        if preserve_ad:
            new |= old & (_PAGE_ACCESSED | _PAGE_DIRTY)
        self.write_entry(maddr, new)

    # ------------------------------------------- references held by subsystems
    def hold_page(self, mfn: int, d, writable: bool = False, type_: int | None = None) -> int:
        """A subsystem keeps a frame of `d` and, if `writable` (or `type_`, e.g.
        PGT_seg_desc_page for a GDT frame), a type reference on it: 0 or -EINVAL.
        A frame held writable (the hypervisor writes it) never becomes a page
        table. Balanced by release_page; the checker counts these holds."""
        if writable:
            type_ = PGT_writable_page
        with self.lock:
            if not self.get_page_from_mfn(mfn, d):
                return -E.EINVAL
            if type_ is not None and self.get_page_type(mfn, type_):
                self.put_page(mfn)
                return -E.EINVAL
            self.held_refs[mfn] += 1
            if type_ is not None:
                self.held_type_refs[mfn] += 1
            return 0

    def release_page(self, mfn: int, writable: bool = False, type_: int | None = None) -> None:
        typed = writable or type_ is not None
        with self.lock:
            if not self.held_refs[mfn]:
                self.held_refs.pop(mfn, None)
                return          # dropped already by the owner's teardown
            self.held_refs[mfn] -= 1
            if not self.held_refs[mfn]:
                del self.held_refs[mfn]
            if typed:
                self.held_type_refs[mfn] -= 1
                if not self.held_type_refs[mfn]:
                    del self.held_type_refs[mfn]
                self.put_page_type(mfn)
            self.put_page(mfn)

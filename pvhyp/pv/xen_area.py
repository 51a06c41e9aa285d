"""The hypervisor's own part of every PV guest's address space.

x86-64 PV guests run with the hypervisor's L4 slots 256-271 present in each
of their L4 tables (the PV MMU copies `xen_l4_entries()` into every L4 it
validates).  pvhyp places there, in frames owned by DOMID_XEN:

  slot 256  RO_MPT_VIRT_START  the machine-to-phys table, read-only and
                               guest-visible (Linux and XTF read it directly)
  slot 260  PERDOMAIN          one 64 KiB window per vCPU: its guest GDT frames
                               (pages 0-13, read-only), the reserved GDT page
                               (page 14: Xen's ring-0/ring-3 flat descriptors)
                               and the stack the entry stub irets from (page 15)
  slot 261  XEN_VIRT_START     the CPL0 entry stub (`iretq`), an IDT, a TSS

Everything except the M2P is supervisor-only, so guest code, which always
runs at CPL3, faults on it.  The descriptor pages stay reachable because
descriptor-table accesses are implicit supervisor accesses.
"""
from __future__ import annotations

import struct
import threading
from typing import Callable, Iterable, Sequence

from abi.arch_x86_xen import FIRST_RESERVED_GDT_ENTRY, FIRST_RESERVED_GDT_PAGE
from abi.x86_pte import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
    L1_PAGETABLE_ENTRIES,
    PAGE_SIZE,
    PTE_FRAME_MASK,
    l1_table_offset,
    l2_table_offset,
    l3_table_offset,
    l4_table_offset,
)

# The flat selectors are read by the PV layer as L.FLAT_*, hence the noqa.
from abi.xen_x86_64 import (  # noqa: F401
    FLAT_KERNEL_CS,
    FLAT_KERNEL_SS,
    FLAT_RING3_CS32,
    FLAT_RING3_CS64,
    FLAT_RING3_DS32,
    FLAT_USER_CS,
    FLAT_USER_SS,
    MACH2PHYS_VIRT_START,
)

ENTRIES = L1_PAGETABLE_ENTRIES      # per table, at every level

# Accessed/dirty preset so the CPU's page walker never writes these tables.
_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
_HV_DATA = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX
_HV_RODATA = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_NX
_HV_CODE = _PAGE_PRESENT | _PAGE_ACCESSED
_GUEST_RO = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX

RO_MPT_VIRT_START = MACH2PHYS_VIRT_START     # Xen's own name for where the read-only M2P is mapped
PERDOMAIN_VIRT_START = 0xFFFF_8200_0000_0000
XEN_VIRT_START = 0xFFFF_8280_0000_0000

MAX_GUEST_GDT_FRAMES = FIRST_RESERVED_GDT_PAGE
GDT_LIMIT = (FIRST_RESERVED_GDT_PAGE + 1) * PAGE_SIZE - 1
VCPU_WINDOW_PAGES = 16
VCPU_WINDOW_SIZE = VCPU_WINDOW_PAGES * PAGE_SIZE
ENTRY_STACK_PAGE = 15
MAX_VCPU_WINDOWS = ENTRIES * ENTRIES // VCPU_WINDOW_PAGES   # one L2 of L1s

# Xen's own selectors in the reserved GDT page (the flat ring-3 ones come from abi.xen_x86_64).
HYPERVISOR_CS = 0xE008
HYPERVISOR_DS = 0xE010
TSS_SELECTOR = 0xE040

# Flat descriptors as Xen installs them, accessed bit preset.
_RESERVED_DESCRIPTORS = {
    HYPERVISOR_CS: 0x00AF9B000000FFFF,
    HYPERVISOR_DS: 0x00CF93000000FFFF,
    FLAT_RING3_CS32: 0x00CFFB000000FFFF,
    FLAT_RING3_DS32: 0x00CFF3000000FFFF,
    FLAT_RING3_CS64: 0x00AFFB000000FFFF,
}
TSS_SIZE = 0x68

# Page offsets inside the XEN_VIRT_START area.
_STUB_PAGE, _IDT_PAGE, _TSS_PAGE = 0, 1, 2
ENTRY_STUB_VA = XEN_VIRT_START + _STUB_PAGE * PAGE_SIZE
IDT_VA = XEN_VIRT_START + _IDT_PAGE * PAGE_SIZE
TSS_VA = XEN_VIRT_START + _TSS_PAGE * PAGE_SIZE
_IRETQ = bytes.fromhex("48cf")
_UD2 = bytes.fromhex("0f0b")


def frames_from_range(first_mfn: int, count: int) -> Callable[[], int]:
    """A frame source for tests and early bring-up: hands out a fixed range."""
    it = iter(range(first_mfn, first_mfn + count))

    def alloc() -> int:
        try:
            return next(it)
        except StopIteration:
            raise MemoryError("hypervisor frame range exhausted") from None
    return alloc


def _tss_descriptor(base: int) -> tuple[int, int]:
    limit = TSS_SIZE - 1
    low = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89 << 40) | (((limit >> 16) & 0xF) << 48) \
        | (((base >> 24) & 0xFF) << 56)
    return low, base >> 32


class XenArea:
    """Builds and owns the hypervisor page tables shared by all guests.

    `memory` is the MachineMemory; `alloc_frame()` returns a fresh DOMID_XEN
    frame (the frame table's job); `m2p_mfns` are the frames holding the M2P
    in order.
    """

    def __init__(self, memory, alloc_frame: Callable[[], int], m2p_mfns: Sequence[int] = ()):
        self.memory = memory
        self._alloc_frame = alloc_frame
        self._lock = threading.Lock()
        self._l3: dict[int, int] = {}       # l4 slot -> L3 mfn
        self._perdomain_l1: dict[int, int] = {}   # index of 2 MiB chunk -> L1 mfn
        self._free_windows: list[int] = []
        self._next_window = 0
        self.reserved_gdt_mfn = self._new_frame()
        self._build_xen_text()
        self._map_m2p(list(m2p_mfns))

    # --- public --------------------------------------------------------
    def xen_l4_entries(self) -> dict[int, int]:
        """L4 slot -> entry to install in every guest L4 (slots 256-271)."""
        entries = {}
        for slot, l3 in self._l3.items():
            flags = _TABLE | _PAGE_USER if slot == l4_table_offset(RO_MPT_VIRT_START) else _TABLE
            entries[slot] = (l3 << 12) | flags
        return entries

    def install_into_l4(self, l4_mfn: int) -> None:
        """Write the hypervisor slots into an L4 (for builders and tests)."""
        for slot, pte in self.xen_l4_entries().items():
            self.memory.write_u64((l4_mfn << 12) + slot * 8, pte)

    def allocate_vcpu_window(self) -> int:
        """Reserve a per-vCPU window (GDT + entry stack); returns its index."""
        with self._lock:
            if self._free_windows:
                index = self._free_windows.pop()
            elif self._next_window < MAX_VCPU_WINDOWS:
                index = self._next_window
                self._next_window += 1
            else:
                raise MemoryError("no vCPU windows left in the per-domain area")
            l1 = self._window_l1(index)
        first = (index * VCPU_WINDOW_PAGES) % ENTRIES
        for page in range(VCPU_WINDOW_PAGES):
            self.memory.write_u64((l1 << 12) + (first + page) * 8, 0)
        self._set_window_pte(index, FIRST_RESERVED_GDT_PAGE, (self.reserved_gdt_mfn << 12) | _HV_RODATA)
        self._set_window_pte(index, ENTRY_STACK_PAGE, (self._new_frame() << 12) | _HV_DATA)
        return index

    def release_vcpu_window(self, index: int) -> None:
        with self._lock:
            self._free_windows.append(index)

    def window_va(self, index: int) -> int:
        return PERDOMAIN_VIRT_START + index * VCPU_WINDOW_SIZE

    def gdt_va(self, index: int) -> int:
        return self.window_va(index)

    def entry_stack_top(self, index: int) -> int:
        return self.window_va(index) + (ENTRY_STACK_PAGE + 1) * PAGE_SIZE

    def entry_stack_maddr(self, index: int) -> int:
        """Machine address of the entry stack page (the stub's iret frame is written there)."""
        return self._window_pte(index, ENTRY_STACK_PAGE) & PTE_FRAME_MASK

    def set_guest_gdt(self, index: int, frames: Iterable[int]) -> None:
        """Map a guest's GDT frames (already validated by the MMU) read-only.

        The engine must flush its TLB afterwards.
        """
        frames = list(frames)
        if len(frames) > MAX_GUEST_GDT_FRAMES:
            raise ValueError(f"a guest GDT has at most {MAX_GUEST_GDT_FRAMES} frames")
        for page in range(MAX_GUEST_GDT_FRAMES):
            pte = (frames[page] << 12) | _HV_RODATA if page < len(frames) else 0
            self._set_window_pte(index, page, pte)

    # --- construction --------------------------------------------------
    def _new_frame(self) -> int:
        mfn = self._alloc_frame()
        self.memory.write(mfn << 12, bytes(PAGE_SIZE))
        return mfn

    def _table_for(self, va: int, level_leaf: int = 1) -> int:
        """The table at `level_leaf` (1 = L1) covering `va`, created on demand."""
        slot = l4_table_offset(va)
        table = self._l3.get(slot)
        if table is None:
            table = self._l3[slot] = self._new_frame()
        user = _PAGE_USER if slot == l4_table_offset(RO_MPT_VIRT_START) else 0
        for table_offset in (l3_table_offset, l2_table_offset)[: 3 - level_leaf]:
            entry_addr = (table << 12) + table_offset(va) * 8
            entry = self.memory.read_u64(entry_addr)
            if not entry & _PAGE_PRESENT:
                child = self._new_frame()
                self.memory.write_u64(entry_addr, (child << 12) | _TABLE | user)
                table = child
            else:
                table = (entry & PTE_FRAME_MASK) >> 12
        return table

    def _map_page(self, va: int, pte: int) -> None:
        l1 = self._table_for(va)
        self.memory.write_u64((l1 << 12) + l1_table_offset(va) * 8, pte)

    def _build_xen_text(self) -> None:
        stub = self._new_frame()
        self.memory.write(stub << 12, _IRETQ + _UD2)
        self._map_page(ENTRY_STUB_VA, (stub << 12) | _HV_CODE)
        # Unicorn never delivers through the IDT; an all-not-present IDT keeps
        # the CPU state architecturally sane.
        self._map_page(IDT_VA, (self._new_frame() << 12) | _HV_RODATA)
        tss = self._new_frame()
        self._map_page(TSS_VA, (tss << 12) | _HV_DATA)
        gdt = self.reserved_gdt_mfn << 12
        for selector, descriptor in _RESERVED_DESCRIPTORS.items():
            self.memory.write_u64(gdt + (selector >> 3) * 8 - FIRST_RESERVED_GDT_ENTRY * 8, descriptor)
        low, high = _tss_descriptor(TSS_VA)
        tss_slot = gdt + ((TSS_SELECTOR >> 3) - FIRST_RESERVED_GDT_ENTRY) * 8
        self.memory.write(tss_slot, struct.pack("<QQ", low, high))
        # No I/O bitmap: iomap base past the limit.
        self.memory.write((tss << 12) + 0x66, struct.pack("<H", TSS_SIZE))
        self._table_for(PERDOMAIN_VIRT_START, level_leaf=2)

    def _map_m2p(self, m2p_mfns: list[int]) -> None:
        if len(m2p_mfns) > ENTRIES ** 3:
            raise ValueError("M2P larger than one L4 slot")
        self._table_for(RO_MPT_VIRT_START, level_leaf=3)
        for i, mfn in enumerate(m2p_mfns):
            self._map_page(RO_MPT_VIRT_START + i * PAGE_SIZE, (mfn << 12) | _GUEST_RO)

    def _window_l1(self, index: int) -> int:
        chunk = index * VCPU_WINDOW_PAGES // ENTRIES
        l1 = self._perdomain_l1.get(chunk)
        if l1 is None:
            l1 = self._perdomain_l1[chunk] = self._table_for(self.window_va(index))
        return l1

    def _window_pte_addr(self, index: int, page: int) -> int:
        l1 = self._perdomain_l1[index * VCPU_WINDOW_PAGES // ENTRIES]
        return (l1 << 12) + ((index * VCPU_WINDOW_PAGES + page) % ENTRIES) * 8

    def _window_pte(self, index: int, page: int) -> int:
        return self.memory.read_u64(self._window_pte_addr(index, page))

    def _set_window_pte(self, index: int, page: int, pte: int) -> None:
        self.memory.write_u64(self._window_pte_addr(index, page), pte)

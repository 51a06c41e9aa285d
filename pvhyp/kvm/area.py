"""What the KVM engine adds to the hypervisor's part of every address space.

Two more L4 slots of the hypervisor range (PV guests cannot map 256-271), in
DOMID_XEN frames, both supervisor-only, so guest code (always CPL3) faults on
them:

  slot 262  DIRECTMAP   all machine memory, RW, NX, 2 MiB pages (Xen's direct map):
                        the CPL0 stub replays the hypervisor's page-table writes
                        through it, so that KVM's shadow MMU sees them (see engine.py)
  slot 263  KVM_TEXT    page 0: the CPL0 stubs; page 1: the IDT

The stubs are a handful of instructions each, since kvm_pvm emulates every CPL0
instruction (about 1 us each):

  vector stubs (8 bytes apart, one per IDT vector): `out STUB_PORT, al`. KVM
      leaves KVM_RUN with an I/O exit and the RIP names the vector; the CPU has
      pushed the exception frame on the vCPU's CPL0 stack (the TSS's RSP0). The
      #PF stub first pushes rax and CR2 (a GET_SREGS would cost more).
  iret stub: `iretq` alone, for a return that replays nothing and keeps CR3: the
      engine writes the frame, KVM_SET_REGS sets every GPR, and one emulated
      instruction reaches CPL3 (a KVM_GET_SREGS + KVM_SET_SREGS pair costs more).
  return stub: replays the queued page-table writes (`lock or qword [va], 0`: the
      same value again, atomically against host threads), loads CR3 if asked,
      restores the four registers it used and `iretq`s to the guest at CPL3.

Per vCPU the engine uses the entry-stack page of its XenArea window: its TSS
(RSP0 = the page's top) at the bottom of the page and its CPL0 stack above.
"""
from __future__ import annotations

import struct
from typing import Callable

from abi.x86_pte import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    L1_PAGETABLE_ENTRIES,
    L2_PAGETABLE_SHIFT,
    L3_PAGETABLE_SHIFT,
    PAGE_SIZE,
    l1_table_offset,
    l2_table_offset,
    l3_table_offset,
    l4_table_offset,
)
from abi.x86_regs import TRAP_page_fault
from pvhyp.pv import xen_area as L

DIRECTMAP_VIRT_START = 0xFFFF_8300_0000_0000      # slot 262, Xen's own direct map slot
KVM_TEXT_VIRT_START = 0xFFFF_8380_0000_0000       # slot 263
STUB_VA = KVM_TEXT_VIRT_START
IDT_VA = KVM_TEXT_VIRT_START + PAGE_SIZE
IDT_LIMIT = 256 * 16 - 1

STUB_PORT = 0x11
STUB_STRIDE = 8
RETURN_STUB_OFFSET = 0x800
RETURN_STUB_VA = STUB_VA + RETURN_STUB_OFFSET
IRET_STUB_OFFSET = 0xA00
IRET_STUB_VA = STUB_VA + IRET_STUB_OFFSET
_IRET = bytes.fromhex("48cf")       # iretq
# MSR_LSTAR: supervisor-only, so a `syscall` that jumps there at CPL3 (kvm_pvm ignores
# EFER.SCE) faults with this RIP; never executed.
SYSCALL_TRAP_VA = STUB_VA + 0xF00
NO_CR3 = 0xFFFF_FFFF_FFFF_FFFF          # the return block's "keep CR3"
# A rewrite at this offset of a frame straddles two entries: KVM drops its shadows of the frame.
SHADOW_ZAP_OFFSET = 4

# Vectors whose gate a CPL3 `int N` may use: int3 and into, as in Xen's IDT.
USER_GATES = (3, 4)

_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
_DIRECT_2M = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_PSE | _PAGE_NX
_CODE = _PAGE_PRESENT | _PAGE_ACCESSED
_RODATA = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_NX

_OUT = bytes([0xE6, STUB_PORT])                         # out STUB_PORT, al
_UD2 = bytes.fromhex("0f0b")
_PAGE_FAULT_STUB = bytes.fromhex("50" "0f20d0" "50") + _OUT   # push rax; mov rax, cr2; push rax; out

# Return block at RSP (8-byte fields): count, cr3 (NO_CR3: keep), saved rax rcx rsi rdi,
# the iret frame's address, then `count` direct-map addresses to rewrite.
BLOCK_HEADER = 7
_RETURN_STUB = bytes.fromhex(
    "488b0c24"          # mov rcx, [rsp]            count
    "488d742438"        # lea rsi, [rsp+56]         first address
    "4885c9"            # test rcx, rcx
    "7411"              # jz .writes_done
    # .loop:
    "488b3e"            # mov rdi, [rsi]
    "f048830f00"        # lock or qword [rdi], 0    the same value again, seen by KVM's MMU
    "4883c608"          # add rsi, 8
    "48ffc9"            # dec rcx
    "75ef"              # jnz .loop
    # .writes_done:
    "488b442408"        # mov rax, [rsp+8]          cr3 or NO_CR3
    "4883f8ff"          # cmp rax, -1
    "7403"              # je .no_cr3
    "0f22d8"            # mov cr3, rax
    # .no_cr3:
    "488b442410"        # mov rax, [rsp+16]
    "488b4c2418"        # mov rcx, [rsp+24]
    "488b742420"        # mov rsi, [rsp+32]
    "488b7c2428"        # mov rdi, [rsp+40]
    "488b642430"        # mov rsp, [rsp+48]         the iret frame
    "48cf"              # iretq
)


def vector_of_stub_exit(rip: int) -> int | None:
    """The vector whose stub exited with RIP just past its `out` (None: not a vector stub)."""
    offset = rip - STUB_VA
    if 0 <= offset < 256 * STUB_STRIDE:
        return offset // STUB_STRIDE
    return None


def in_vector_stubs(rip: int) -> bool:
    return STUB_VA <= rip < STUB_VA + 256 * STUB_STRIDE


def in_return_stub(rip: int) -> bool:
    """Inside the return stub or the iret stub: the guest is not back at CPL3 yet."""
    return RETURN_STUB_VA <= rip < RETURN_STUB_VA + len(_RETURN_STUB) or rip == IRET_STUB_VA


def directmap_va(maddr: int) -> int:
    return DIRECTMAP_VIRT_START + maddr


class KvmArea:
    """Builds the two slots; `alloc_frame()` returns a fresh DOMID_XEN frame."""

    def __init__(self, memory, alloc_frame: Callable[[], int]):
        self.memory = memory
        self._alloc_frame = alloc_frame
        self._l3: dict[int, int] = {}
        self._build_directmap()
        self._build_text()

    def xen_l4_entries(self) -> dict[int, int]:
        return {slot: (l3 << 12) | _TABLE for slot, l3 in self._l3.items()}

    def install_into_l4(self, l4_mfn: int) -> None:
        for slot, pte in self.xen_l4_entries().items():
            self.memory.write_u64((l4_mfn << 12) + slot * 8, pte)

    def _new_frame(self) -> int:
        mfn = self._alloc_frame()
        self.memory.write(mfn << 12, bytes(PAGE_SIZE))
        return mfn

    def _child(self, table: int, index: int) -> int:
        entry_addr = (table << 12) + index * 8
        entry = self.memory.read_u64(entry_addr)
        if entry & _PAGE_PRESENT:
            return (entry >> 12) & ((1 << 40) - 1)
        child = self._new_frame()
        self.memory.write_u64(entry_addr, (child << 12) | _TABLE)
        return child

    def _l3_for(self, va: int) -> int:
        slot = l4_table_offset(va)
        if slot not in self._l3:
            self._l3[slot] = self._new_frame()
        return self._l3[slot]

    def _build_directmap(self) -> None:
        l3 = self._l3_for(DIRECTMAP_VIRT_START)
        two_mb = 1 << L2_PAGETABLE_SHIFT
        for maddr in range(0, self.memory.size, two_mb):
            va = DIRECTMAP_VIRT_START + maddr
            l2 = self._child(l3, l3_table_offset(va))
            self.memory.write_u64((l2 << 12) + l2_table_offset(va) * 8, maddr | _DIRECT_2M)
        if self.memory.size > L1_PAGETABLE_ENTRIES << L3_PAGETABLE_SHIFT:
            raise ValueError("machine memory larger than one L4 slot's direct map")

    def _map_page(self, va: int, mfn: int, flags: int) -> None:
        l2 = self._child(self._l3_for(va), l3_table_offset(va))
        l1 = self._child(l2, l2_table_offset(va))
        self.memory.write_u64((l1 << 12) + l1_table_offset(va) * 8, (mfn << 12) | flags)

    def _build_text(self) -> None:
        stubs = bytearray(PAGE_SIZE)
        for vector in range(256):
            code = _PAGE_FAULT_STUB if vector == TRAP_page_fault else _OUT   # it pushes rax and CR2 first
            code = (code + _UD2)[:STUB_STRIDE]      # RIP is always reset after the exit
            stubs[vector * STUB_STRIDE:vector * STUB_STRIDE + len(code)] = code
        stubs[RETURN_STUB_OFFSET:RETURN_STUB_OFFSET + len(_RETURN_STUB)] = _RETURN_STUB
        stubs[IRET_STUB_OFFSET:IRET_STUB_OFFSET + len(_IRET)] = _IRET
        stub_mfn = self._new_frame()
        self.memory.write(stub_mfn << 12, bytes(stubs))
        self._map_page(STUB_VA, stub_mfn, _CODE)
        idt = bytearray(PAGE_SIZE)
        for vector in range(256):
            target = STUB_VA + vector * STUB_STRIDE
            dpl = 3 if vector in USER_GATES else 0
            type_attr = 0x80 | (dpl << 5) | 0xE           # present, 64-bit interrupt gate
            low = (target & 0xFFFF) | (L.HYPERVISOR_CS << 16) | (type_attr << 40) | ((target >> 16) & 0xFFFF) << 48
            struct.pack_into("<QQ", idt, vector * 16, low, target >> 32)
        idt_mfn = self._new_frame()
        self.memory.write(idt_mfn << 12, bytes(idt))
        self._map_page(IDT_VA, idt_mfn, _RODATA)

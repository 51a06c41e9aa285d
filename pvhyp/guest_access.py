"""copy_from_guest / copy_to_guest: the one road into a guest's memory.

Every handler, the fuzzer and the trace decoder read guest buffers through
here, and the CPU engine and the PV layer read and write guest virtual memory
through the same walk (read_guest_virtual / write_guest_virtual). An x86 PV guest passes virtual addresses, resolved through its current
page tables exactly as the CPU would (present and user at every level, RW for
writes; Xen's guest-handle rule refuses the hypervisor's own range). A process
domain (dom0, Python guests) passes pseudo-physical addresses, resolved
through its P2M. Whatever the guest wrote into its tables, the walk only ever
lands on machine memory or raises GuestFault, which handlers answer -EFAULT.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from abi.x86_pte import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    _PAGE_USER,
    L1_PAGETABLE_SHIFT,
    L2_PAGETABLE_SHIFT,
    L3_PAGETABLE_SHIFT,
    L4_PAGETABLE_SHIFT,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_FRAME_MASK,
    l1_table_offset,
    l2_table_offset,
    l3_table_offset,
    l4_table_offset,
)
from abi.xen_x86_64 import HYPERVISOR_VIRT_END

if TYPE_CHECKING:
    from pvhyp.domain import VCPU

_U64 = struct.Struct("<Q")
_VA_MASK = 0xFFFF_FFFF_FFFF_FFFF
_LEVELS = ((4, L4_PAGETABLE_SHIFT, l4_table_offset), (3, L3_PAGETABLE_SHIFT, l3_table_offset),
           (2, L2_PAGETABLE_SHIFT, l2_table_offset), (1, L1_PAGETABLE_SHIFT, l1_table_offset))


class GuestFault(Exception):
    """A guest address that does not resolve (answered with -EFAULT)."""

    def __init__(self, addr: int, write: bool = False):
        super().__init__(f"guest {'write' if write else 'read'} fault at {addr:#x}")
        self.addr = addr
        self.write = write


def is_canonical_address(va: int) -> bool:
    """Bits 63..47 all equal (a 48-bit virtual address sign-extended)."""
    top = va >> 47
    return top == 0 or top == 0x1FFFF


def addr_ok(addr: int) -> bool:
    """Xen's __addr_ok: lower half, or above the hypervisor's reserved range."""
    return addr < (1 << 47) or addr >= HYPERVISOR_VIRT_END


def handle_ok(domain, addr: int) -> bool:
    """A guest handle of `domain` may start at `addr`: only paging (x86 PV) guests
    have the hypervisor's range in their address space; a process domain's
    pseudo-physical addresses are all its own."""
    return not domain.paging or addr_ok(addr)


def walk(memory, l4_mfn: int, va: int, write: bool, user: bool = True) -> int:
    """Resolve `va` through the 4-level table rooted at `l4_mfn`; machine address or GuestFault."""
    if not (0 <= va <= _VA_MASK) or not is_canonical_address(va):
        raise GuestFault(va, write)
    need = _PAGE_PRESENT | (_PAGE_RW if write else 0) | (_PAGE_USER if user else 0)
    table = l4_mfn
    buf = memory.buf
    nr_frames = memory.nr_frames
    for level, shift, table_offset in _LEVELS:
        if not 0 < table < nr_frames:
            raise GuestFault(va, write)
        entry = _U64.unpack_from(buf, (table << PAGE_SHIFT) + table_offset(va) * 8)[0]
        if entry & need != need:
            raise GuestFault(va, write)
        if level in (3, 2) and entry & _PAGE_PSE:
            page_bytes = 1 << shift
            base = entry & PTE_FRAME_MASK & ~(page_bytes - 1)
            maddr = base + (va & (page_bytes - 1))
            if maddr >= memory.size:
                raise GuestFault(va, write)
            return maddr
        table = (entry & PTE_FRAME_MASK) >> PAGE_SHIFT
    if not 0 <= table < nr_frames:
        raise GuestFault(va, write)
    return (table << PAGE_SHIFT) | (va & (PAGE_SIZE - 1))


def translate(vcpu: "VCPU", addr: int, write: bool) -> int:
    """Machine address of guest address `addr` as seen by `vcpu` now."""
    domain = vcpu.domain
    memory = domain.hv.memory
    if not domain.paging:
        pfn = addr >> PAGE_SHIFT
        mfn = domain.pfn_to_mfn(pfn) if addr >= 0 else -1
        if not 0 < mfn < memory.nr_frames:
            raise GuestFault(addr, write)
        return (mfn << PAGE_SHIFT) | (addr & (PAGE_SIZE - 1))
    if not addr_ok(addr):
        raise GuestFault(addr, write)
    return walk(memory, vcpu.current_table, addr, write)


def _chunks(addr: int, length: int):
    """(address, length) pieces of a range, split at page boundaries."""
    while length > 0:
        n = min(length, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
        yield addr, n
        addr += n
        length -= n


def _read(memory, resolve, addr: int, length: int) -> bytes:
    """The bytes at `addr`, each page resolved by `resolve(address, write)`."""
    parts = []
    for piece, n in _chunks(addr, length):
        ma = resolve(piece, False)
        parts.append(memory.buf[ma:ma + n])
    return b"".join(parts)


def _write(memory, resolve, addr: int, data: bytes) -> None:
    """Write `data` at `addr`; every page is resolved before any is written,
    so a fault leaves guest memory untouched."""
    targets = [(resolve(piece, True), n) for piece, n in _chunks(addr, len(data))]
    offset = 0
    for ma, n in targets:
        memory.buf[ma:ma + n] = data[offset:offset + n]
        offset += n


def copy_from_guest(vcpu: "VCPU", addr: int, length: int) -> bytes:
    if length < 0 or addr < 0 or addr + length > 1 << 64:
        raise GuestFault(addr)
    return _read(vcpu.domain.hv.memory, lambda va, write: translate(vcpu, va, write), addr, length)


def copy_to_guest(vcpu: "VCPU", addr: int, data: bytes) -> None:
    if addr < 0 or addr + len(data) > 1 << 64:
        raise GuestFault(addr, True)
    _write(vcpu.domain.hv.memory, lambda va, write: translate(vcpu, va, write), addr, data)


# --- the CPU's own view: the CR3 it runs on, user rights ---------------------------------
# The PV layer reads and writes through the page tables the vCPU uses now for
# the bounce frame on the guest kernel stack, the iret frame and instruction
# bytes to decode. A PV guest kernel runs at CPL3, so it can only have meant
# memory it may touch; a range that wraps past the top of the address space
# continues at 0, as the CPU's would.

def _cpu_resolver(memory, cr3: int):
    return lambda va, write: walk(memory, cr3 >> PAGE_SHIFT, va & _VA_MASK, write, user=True)


def read_guest_virtual(memory, cr3: int, va: int, length: int) -> bytes | None:
    """Bytes at `va`, or None if any of them is not readable by the guest."""
    try:
        return _read(memory, _cpu_resolver(memory, cr3), va & _VA_MASK, length)
    except GuestFault:
        return None


def write_guest_virtual(memory, cr3: int, va: int, data: bytes) -> bool:
    """Write all of `data` at `va` or nothing; False if a page is not writable."""
    try:
        _write(memory, _cpu_resolver(memory, cr3), va & _VA_MASK, data)
    except GuestFault:
        return False
    return True

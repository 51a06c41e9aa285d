"""copy_from_guest / copy_to_guest: the one road into a guest's memory.

Every handler, the fuzzer and the trace decoder read guest buffers through
here. An x86 PV guest passes virtual addresses, resolved through its current
page tables exactly as the CPU would (present and user at every level, RW for
writes; Xen's guest-handle rule refuses the hypervisor's own range). A process
domain (dom0, Python guests) passes pseudo-physical addresses, resolved
through its P2M. Whatever the guest wrote into its tables, the walk only ever
lands on machine memory or raises GuestFault, which handlers answer -EFAULT.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from pvhyp.domain import VCPU

_PRESENT, _RW, _USER, _PSE = 0x1, 0x2, 0x4, 0x80
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_U64 = struct.Struct("<Q")

# Guest handles may not point into the hypervisor's reserved range (Xen's __addr_ok).
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000
HYPERVISOR_VIRT_END = 0xFFFF_8800_0000_0000


class GuestFault(Exception):
    """A guest address that does not resolve (answered with -EFAULT)."""

    def __init__(self, addr: int, write: bool = False):
        super().__init__(f"guest {'write' if write else 'read'} fault at {addr:#x}")
        self.addr = addr
        self.write = write


def _canonical(va: int) -> bool:
    top = va >> 47
    return top == 0 or top == 0x1FFFF


def walk(memory, l4_mfn: int, va: int, write: bool, user: bool = True) -> int:
    """Resolve `va` through the 4-level table rooted at `l4_mfn`; machine address or GuestFault."""
    if not (0 <= va <= 0xFFFF_FFFF_FFFF_FFFF) or not _canonical(va):
        raise GuestFault(va, write)
    need = _PRESENT | (_RW if write else 0) | (_USER if user else 0)
    table = l4_mfn
    buf = memory.buf
    nr_frames = memory.nr_frames
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        if not 0 < table < nr_frames:
            raise GuestFault(va, write)
        entry = _U64.unpack_from(buf, (table << PAGE_SHIFT) + ((va >> shift) & 0x1FF) * 8)[0]
        if entry & need != need:
            raise GuestFault(va, write)
        if level in (3, 2) and entry & _PSE:
            page_bytes = 1 << shift
            base = entry & _ADDR_MASK & ~(page_bytes - 1)
            maddr = base + (va & (page_bytes - 1))
            if maddr >= memory.size:
                raise GuestFault(va, write)
            return maddr
        table = (entry & _ADDR_MASK) >> PAGE_SHIFT
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
    if HYPERVISOR_VIRT_START <= addr < HYPERVISOR_VIRT_END:
        raise GuestFault(addr, write)
    return walk(memory, vcpu.current_table, addr, write)


def _chunks(addr: int, length: int):
    """(address, length) pieces of a range, split at page boundaries."""
    while length > 0:
        n = min(length, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
        yield addr, n
        addr += n
        length -= n


def copy_from_guest(vcpu: "VCPU", addr: int, length: int) -> bytes:
    if length < 0 or addr < 0 or addr + length > 1 << 64:
        raise GuestFault(addr)
    memory = vcpu.domain.hv.memory
    parts = []
    for va, n in _chunks(addr, length):
        ma = translate(vcpu, va, False)
        parts.append(memory.buf[ma:ma + n])
    return b"".join(parts)


def copy_to_guest(vcpu: "VCPU", addr: int, data: bytes) -> None:
    if addr < 0 or addr + len(data) > 1 << 64:
        raise GuestFault(addr, True)
    memory = vcpu.domain.hv.memory
    # Resolve every page before writing any: a fault leaves guest memory untouched.
    targets = [(translate(vcpu, va, True), n) for va, n in _chunks(addr, len(data))]
    off = 0
    for ma, n in targets:
        memory.buf[ma:ma + n] = data[off:off + n]
        off += n

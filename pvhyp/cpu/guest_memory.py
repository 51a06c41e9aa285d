"""Reading and writing guest virtual memory the way the guest's CPU would.

The PV layer needs this for the bounce frame on the guest kernel stack, the
iret frame, and instruction bytes to decode.  Translation goes through the
page tables the vCPU is using now (its CR3), with user-mode rights: a PV
guest kernel runs at CPL3, so it can only have meant memory it may touch.
"""
from __future__ import annotations

from pvhyp.guest_access import GuestFault, walk

PAGE_SIZE = 4096


def _pieces(va: int, length: int):
    while length > 0:
        n = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
        yield va, n
        va += n
        length -= n


def translate(memory, cr3: int, va: int, write: bool) -> int:
    """Machine address of `va`, or GuestFault."""
    va &= 0xFFFF_FFFF_FFFF_FFFF
    return walk(memory, cr3 >> 12, va, write, user=True)


def read_guest_virtual(memory, cr3: int, va: int, length: int) -> bytes | None:
    """Bytes at `va`, or None if any of them is not readable by the guest."""
    try:
        parts = []
        for piece_va, n in _pieces(va & 0xFFFF_FFFF_FFFF_FFFF, length):
            maddr = translate(memory, cr3, piece_va, False)
            parts.append(memory.buf[maddr:maddr + n])
        return b"".join(parts)
    except GuestFault:
        return None


def write_guest_virtual(memory, cr3: int, va: int, data: bytes) -> bool:
    """Write all of `data` at `va` or nothing; False if a page is not writable."""
    try:
        targets = [(translate(memory, cr3, piece_va, True), n)
                   for piece_va, n in _pieces(va & 0xFFFF_FFFF_FFFF_FFFF, len(data))]
    except GuestFault:
        return False
    offset = 0
    for maddr, n in targets:
        memory.buf[maddr:maddr + n] = data[offset:offset + n]
        offset += n
    return True

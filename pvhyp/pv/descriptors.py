"""Guest descriptor tables (Xen: pv/descriptor-tables.c): the GDT a vCPU loads,
descriptor validation, update_descriptor.

A 64-bit PV guest's GDT lives in its own frames, which take the PV MMU's
seg_desc type while installed (so they are never mapped writable, and every
descriptor in them passed `check_descriptor`). `attach(hv)` gives the MMU
our `validate_segdesc_page` for that type. Frame numbers are machine frames,
as for any PV guest.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from abi import errno as E
from abi.arch_x86_xen import FIRST_RESERVED_GDT_ENTRY
from abi.xen_x86_64 import FLAT_KERNEL_CS
from pvhyp.domain import pv_of
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE
from pvhyp.mm.pagetype import PGT_seg_desc_page, PGT_writable_page
from pvhyp.pv.change import PvChange, notify_arch

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain

GDT_ENTRIES_PER_FRAME = PAGE_SIZE // 8
GUEST_KERNEL_RPL = 3                # a 64-bit PV kernel runs in ring 3

# Segment descriptor bits (high word), as Xen's _SEGMENT_*.
_SEGMENT_TYPE = 15 << 8
_SEGMENT_S = 1 << 12
_SEGMENT_DPL = 3 << 13
_SEGMENT_P = 1 << 15
_CALL_GATE_64 = 0xC00
_DESCRIPTORS = struct.Struct(f"<{GDT_ENTRIES_PER_FRAME}Q")


def fixup_guest_selector(sel: int) -> int:
    """Force a guest selector's RPL up to the guest kernel's ring."""
    return sel if (sel & 3) >= GUEST_KERNEL_RPL else (sel & ~3) | GUEST_KERNEL_RPL


def check_descriptor(raw: int) -> int | None:
    """Validate one GDT/LDT descriptor for a 64-bit PV guest.

    Returns the descriptor as it must be stored (DPL raised to the guest
    kernel's ring; a call gate gets DPL 0 and its original DPL kept in the
    target selector's RPL, so that using it traps for emulation), or None
    when the descriptor is refused.
    """
    a, b = raw & 0xFFFF_FFFF, (raw >> 32) & 0xFFFF_FFFF
    if not b & _SEGMENT_P:
        return raw
    dpl = fixup_guest_selector((b >> 13) & 3)
    b = (b & ~_SEGMENT_DPL) | (dpl << 13)
    if b & _SEGMENT_S:
        return (b << 32) | a
    if b & _SEGMENT_TYPE == 0:
        return raw                      # the upper half of a 64-bit gate
    if b & _SEGMENT_TYPE != _CALL_GATE_64:
        return None
    cs = a >> 16
    if not ((cs >> 3) < FIRST_RESERVED_GDT_ENTRY or cs == FLAT_KERNEL_CS or cs & 4):
        return None
    b &= ~_SEGMENT_DPL
    cs = (cs & ~3) | dpl
    a = (a & 0xFFFF) | (cs << 16)
    if b & 0xFF:
        return None
    return (b << 32) | a


def validate_segdesc_page(memory, mfn: int) -> int:
    """The MMU's check for the seg_desc type: every descriptor valid (fixed up in place)."""
    base = mfn << PAGE_SHIFT
    descriptors = list(_DESCRIPTORS.unpack_from(memory.buf, base))
    for i, raw in enumerate(descriptors):
        fixed = check_descriptor(raw)
        if fixed is None:
            return -E.EINVAL
        descriptors[i] = fixed
    # Fixed-up descriptors only, each in one store: the GDT may be live on another vCPU.
    memory.words.store_u64_changed(base, descriptors)
    return 0


def get_seg_desc_frame(domain: "Domain", mfn: int) -> bool:
    # A declared hold, so the MMU's audit counts the GDT's reference (and teardown drops it).
    return domain.hv.mmu.hold_page(mfn, domain, type_=PGT_seg_desc_page) == 0


def put_seg_desc_frame(domain: "Domain", mfn: int) -> None:
    domain.hv.mmu.release_page(mfn, type_=PGT_seg_desc_page)


def pv_destroy_gdt(vcpu: "VCPU") -> None:
    pv = pv_of(vcpu)
    for i in range((pv.gdt_ents + GDT_ENTRIES_PER_FRAME - 1) // GDT_ENTRIES_PER_FRAME):
        if pv.gdt_frames[i]:
            put_seg_desc_frame(vcpu.domain, pv.gdt_frames[i])
        pv.gdt_frames[i] = 0
    pv.gdt_ents = 0


def pv_set_gdt(vcpu: "VCPU", frames: list[int], entries: int) -> int:
    """Install a guest GDT of `entries` descriptors in `frames` (machine frames)."""
    if entries > FIRST_RESERVED_GDT_ENTRY:
        return -E.EINVAL
    nr_frames = (entries + GDT_ENTRIES_PER_FRAME - 1) // GDT_ENTRIES_PER_FRAME
    domain = vcpu.domain
    taken: list[int] = []
    for mfn in frames[:nr_frames]:
        if not get_seg_desc_frame(domain, mfn):
            for got in taken:
                put_seg_desc_frame(domain, got)
            return -E.EINVAL
        taken.append(mfn)
    pv_destroy_gdt(vcpu)
    pv = pv_of(vcpu)
    pv.gdt_ents = entries
    for i, mfn in enumerate(taken):
        pv.gdt_frames[i] = mfn
    notify_arch(vcpu, PvChange.GDT)
    return 0


def update_descriptor(vcpu: "VCPU", maddr: int, desc: int) -> int:
    """Write one descriptor at machine address `maddr`, in a frame the caller owns."""
    if maddr % 8:
        return -E.EINVAL
    fixed = check_descriptor(desc)
    if fixed is None:
        return -E.EINVAL
    domain = vcpu.domain
    mfn = maddr >> PAGE_SHIFT
    mmu = domain.hv.mmu
    with mmu.lock:
        if not mmu.get_page_from_mfn(mfn, domain):
            return -E.EINVAL
        # A descriptor page stays one; anything else must be able to be writable.
        type_ = PGT_seg_desc_page if mmu.frames.type[mfn] == PGT_seg_desc_page else PGT_writable_page
        rc = mmu.get_page_type(mfn, type_)
        if rc == 0:
            domain.hv.memory.write_u64(maddr, fixed)
            mmu.put_page_type(mfn)
        mmu.put_page(mfn)
        return -E.EINVAL if rc else 0


# Xen's own flat ring-3 descriptors in the reserved GDT page: all based at 0.
_RESERVED_FLAT_SELECTORS = frozenset({0xE023, 0xE02B, 0xE033})


def read_descriptor(vcpu: "VCPU", sel: int) -> int | None:
    """The guest's descriptor for selector `sel` (GDT or LDT), or None if out of its table."""
    from pvhyp.guest_access import GuestFault, copy_from_guest
    pv = pv_of(vcpu)
    index = sel >> 3
    if sel & 4:
        if index >= pv.ldt_ents:
            return None
        try:
            return int.from_bytes(copy_from_guest(vcpu, pv.ldt_base + index * 8, 8), "little")
        except GuestFault:
            return None
    if index >= pv.gdt_ents:
        return None
    mfn = pv.gdt_frames[index // GDT_ENTRIES_PER_FRAME]
    return vcpu.domain.hv.memory.read_u64((mfn << PAGE_SHIFT) + (index % GDT_ENTRIES_PER_FRAME) * 8)


def data_selector_base(vcpu: "VCPU", sel: int) -> int | None:
    """The base a ring-3 load of `sel` into a data segment register gives, or None if it faults."""
    if sel <= 3:
        return 0
    if sel | 3 in _RESERVED_FLAT_SELECTORS and not sel & 4:
        return 0
    raw = read_descriptor(vcpu, sel)
    if raw is None:
        return None
    b = raw >> 32
    is_code, readable = b & (1 << 11), b & (1 << 9)
    if not b & _SEGMENT_P or not b & _SEGMENT_S or (is_code and not readable):
        return None
    conforming_code = is_code and b & (1 << 10)
    if not conforming_code and (b >> 13) & 3 < 3:
        return None
    return ((b >> 24) & 0xFF) << 24 | (b & 0xFF) << 16 | (raw >> 16) & 0xFFFF


def attach(hv) -> None:
    hv.mmu.validate_segdesc_page = lambda mfn: validate_segdesc_page(hv.memory, mfn)

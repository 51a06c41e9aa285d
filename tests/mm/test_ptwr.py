"""Writable page tables: direct guest writes to its L1 tables, emulated and validated."""
from abi import xen as X
from pvhyp.mm.ptwr import PTWR_CMPXCHG_FAILED, PTWR_OKAY, PTWR_UNHANDLEABLE, ptwr_emulate, ptwr_rmw

P, RW = 0x1, 0x2


def _setup(hv, guest):
    """Pin the page at pfn 40 (mapped read-only at 40 << 12) as an L1 table."""
    t = guest.mfn(40)
    guest.write_frame_entries(t, {0: guest.mfn(8) << 12 | P | RW})
    assert guest.pin(1, t) == 0
    guest.domain.vm_assist |= 1 << X.VMASST_TYPE_writable_pagetables
    return t, 40 << 12


def test_needs_the_vm_assist(hv, guest):
    t, va = _setup(hv, guest)
    guest.domain.vm_assist = 0
    assert ptwr_emulate(guest.vcpu, va + 8, guest.mfn(9) << 12 | P, 8).status == PTWR_UNHANDLEABLE


def test_plain_store_is_validated(hv, guest, other):
    t, va = _setup(hv, guest)
    assert ptwr_emulate(guest.vcpu, va + 8, guest.mfn(9) << 12 | P | RW, 8).status == PTWR_OKAY
    assert hv.memory.read_u64((t << 12) + 8) & ~0xFFF & ((1 << 52) - 1) == guest.mfn(9) << 12
    assert hv.frames.type_count[guest.mfn(9)] == 2
    assert ptwr_emulate(guest.vcpu, va + 16, other.mfn(3) << 12 | P, 8).status == PTWR_UNHANDLEABLE
    assert ptwr_emulate(guest.vcpu, va + 16, t << 12 | P | RW, 8).status == PTWR_UNHANDLEABLE
    assert ptwr_emulate(guest.vcpu, va + 8, 0, 8).status == PTWR_OKAY
    assert hv.frames.type_count[guest.mfn(9)] == 1


def test_not_an_l1_or_misaligned(hv, guest):
    t, va = _setup(hv, guest)
    assert ptwr_emulate(guest.vcpu, (41 << 12) + 8, 0, 8).status == PTWR_UNHANDLEABLE     # not a table
    assert ptwr_emulate(guest.vcpu, va + 9, 0, 8).status == PTWR_UNHANDLEABLE
    assert ptwr_emulate(guest.vcpu, va + 8, 0, 3).status == PTWR_UNHANDLEABLE
    assert ptwr_emulate(guest.vcpu, va + 8, 0, 8, cr2=va + 4096).status == PTWR_UNHANDLEABLE
    assert ptwr_emulate(guest.vcpu, (9 << 12), 0, 8).status == PTWR_UNHANDLEABLE          # writable already


def test_cmpxchg_and_rmw(hv, guest):
    t, va = _setup(hv, guest)
    entry = hv.memory.read_u64(t << 12)
    r = ptwr_emulate(guest.vcpu, va, 0, 8, old=entry ^ 0x1000)
    assert r == (PTWR_CMPXCHG_FAILED, entry)
    assert ptwr_emulate(guest.vcpu, va, 0, 8, old=entry).status == PTWR_OKAY
    assert hv.memory.read_u64(t << 12) == 0
    assert ptwr_emulate(guest.vcpu, va, guest.mfn(8) << 12 | P | RW, 8).status == PTWR_OKAY
    # clear_bit(_PAGE_RW) as Linux does with a locked btr on the low dword.
    r = ptwr_rmw(guest.vcpu, va, 4, lambda old: old & ~RW)
    assert r.status == PTWR_OKAY and r.old & RW
    assert not hv.memory.read_u64(t << 12) & RW
    assert hv.frames.type_count[guest.mfn(8)] == 1
    # A sub-word store to the upper half keeps the lower half; it also drops the
    # guest-kernel marker (bit 52), so the entry becomes a user (global) mapping.
    low = hv.memory.read_u64(t << 12) & 0xFFFF_FFFF
    assert ptwr_emulate(guest.vcpu, va + 4, 0x8000_0000, 4).status == PTWR_OKAY
    assert hv.memory.read_u64(t << 12) == (1 << 63) | low | 0x100


def test_engine_entry_point(hv, guest):
    t, va = _setup(hv, guest)
    new = (guest.mfn(10) << 12 | P | RW).to_bytes(8, "little")
    assert hv.mmu.ptwr_emulate(guest.vcpu, va + 24, new, 8) == PTWR_OKAY
    assert hv.mmu.ptwr_emulate(guest.vcpu, va + 24, (t << 12 | P | RW).to_bytes(8, "little"), 8) == PTWR_UNHANDLEABLE
    assert hv.mmu.ptwr_emulate(guest.vcpu, va + 24, b"\0" * 8, 8, old=b"\1" * 8) == PTWR_CMPXCHG_FAILED

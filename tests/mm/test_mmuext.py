"""HYPERVISOR_mmuext_op: pinning, base pointers, flushes, LDT, page copy/clear."""
import struct

from abi import errno as E
from abi import xen as X

from .mm_kit import BUF_VA, Guest

P, RW = 0x1, 0x2


def _l4_with_buffers(guest, pfn):
    """A second L4 sharing the boot L3 (so hypercall buffers stay reachable)."""
    l4 = guest.mfn(pfn)
    guest.write_frame_entries(l4, {0: guest.tables.l3 << 12 | P | RW})
    return l4


def test_new_baseptr_moves_the_type_reference(hv, guest, flushes):
    l4 = _l4_with_buffers(guest, 40)
    f = hv.frames
    assert guest.mmuext([(X.MMUEXT_NEW_BASEPTR, l4, 0)]) == (0, 1)
    assert guest.vcpu.guest_table == l4 and f.type_count[l4] == 1
    assert f.type_count[guest.tables.l4] == 1         # only the pin is left
    assert flushes.flushes >= 1
    assert guest.mmuext([(X.MMUEXT_NEW_BASEPTR, guest.tables.l4, 0)]) == (0, 1)
    assert f.type_count[l4] == 0


def test_new_baseptr_refusals(hv, guest, other):
    assert guest.mmuext([(X.MMUEXT_NEW_BASEPTR, guest.mfn(9), 0)]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_NEW_BASEPTR, other.tables.l4, 0)]) == (-E.EINVAL, 0)
    dom0 = Guest(hv, 64, privileged=True, domid=0)
    assert dom0.mmuext([(X.MMUEXT_NEW_BASEPTR, other.tables.l4, 0)], other.domid) == (-E.EPERM, 0)


def test_new_user_baseptr(hv, guest):
    l4 = _l4_with_buffers(guest, 41)
    assert guest.mmuext([(X.MMUEXT_NEW_USER_BASEPTR, l4, 0)]) == (0, 1)
    assert guest.vcpu.guest_table_user == l4 and hv.frames.type_count[l4] == 1
    assert guest.mmuext([(X.MMUEXT_NEW_USER_BASEPTR, 0, 0)]) == (0, 1)
    assert hv.frames.type_count[l4] == 0


def test_flushes(hv, guest, flushes):
    guest.ctx.write(BUF_VA, struct.pack("<Q", 1))
    ops = [(X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0), (X.MMUEXT_INVLPG_LOCAL, 0x1000, 0),
           (X.MMUEXT_TLB_FLUSH_MULTI, 0, BUF_VA), (X.MMUEXT_INVLPG_MULTI, 0x1000, BUF_VA),
           (X.MMUEXT_TLB_FLUSH_ALL, 0, 0), (X.MMUEXT_INVLPG_ALL, 0x1000, 0)]
    assert guest.mmuext(ops) == (0, 6)
    assert flushes.flushes == 6
    assert guest.mmuext([(X.MMUEXT_TLB_FLUSH_MULTI, 0, 0xFFFF_8000_0000_0000)]) == (-E.EINVAL, 0)


def test_cache_flush_needs_io_rights(guest):
    assert guest.mmuext([(X.MMUEXT_FLUSH_CACHE, 0, 0)]) == (-E.EACCES, 0)
    assert guest.mmuext([(X.MMUEXT_FLUSH_CACHE_GLOBAL, 0, 0)]) == (-E.EINVAL, 0)


def test_set_ldt(guest):
    assert guest.mmuext([(X.MMUEXT_SET_LDT, 0x10000, 8193)]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_SET_LDT, 0x10008, 16)]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_SET_LDT, 0xFFFF_8000_0000_0000, 16)]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_SET_LDT, 0x10000, 16)]) == (0, 1)
    assert guest.domain.mm.ldt[0] == (0x10000, 16)
    assert guest.mmuext([(X.MMUEXT_SET_LDT, 0x10000, 0)]) == (0, 1)
    assert 0 not in guest.domain.mm.ldt


def test_clear_and_copy_page(hv, guest, other):
    src, dst = guest.mfn(30), guest.mfn(31)
    hv.memory.write(src << 12, b"x" * 4096)
    assert guest.mmuext([(X.MMUEXT_COPY_PAGE, dst, src)]) == (0, 1)
    assert hv.memory.read(dst << 12, 4096) == b"x" * 4096
    assert guest.mmuext([(X.MMUEXT_CLEAR_PAGE, dst, 0)]) == (0, 1)
    assert hv.memory.read(dst << 12, 4096) == bytes(4096)
    assert guest.mmuext([(X.MMUEXT_CLEAR_PAGE, guest.tables.l1s[0], 0)]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_COPY_PAGE, guest.tables.l1s[0], src)]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_COPY_PAGE, dst, other.mfn(3))]) == (-E.EINVAL, 0)
    assert guest.mmuext([(X.MMUEXT_CLEAR_PAGE, other.mfn(3), 0)]) == (-E.EINVAL, 0)


def test_superpage_marks_and_unknown_ops(guest):
    assert guest.mmuext([(X.MMUEXT_MARK_SUPER, guest.mfn(9), 0)]) == (-E.EOPNOTSUPP, 0)
    assert guest.mmuext([(X.MMUEXT_UNMARK_SUPER, guest.mfn(9), 0)]) == (-E.EOPNOTSUPP, 0)
    assert guest.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0), (14, 0, 0)]) == (-E.ENOSYS, 1)
    assert guest.mmuext([(0xFFFF_FFFF, 0, 0)]) == (-E.ENOSYS, 0)


def test_foreign_domains(hv, guest, other):
    assert guest.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0)], other.domid) == (-E.EPERM, 0xEEEEEEEE)
    assert guest.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0)], 0x7F00) == (-E.ESRCH, 0xEEEEEEEE)
    assert guest.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0)], X.DOMID_IO) == (-E.EPERM, 0xEEEEEEEE)
    dom0 = Guest(hv, 64, privileged=True, domid=0)
    t = other.mfn(20)
    hv.memory.write_u64(t << 12, other.mfn(21) << 12 | P)
    # The toolstack pins a table in a domain it builds; the domain must be read-only-mapping it first.
    assert dom0.mmuext([(X.MMUEXT_PIN_L1_TABLE, t, 0)], other.domid) == (-E.EINVAL, 0)
    assert other.mmu_update([(other.l1_slot_maddr(20), t << 12 | P)]) == (0, 1)
    assert dom0.mmuext([(X.MMUEXT_PIN_L1_TABLE, t, 0)], other.domid) == (0, 1)
    assert dom0.mmuext([(X.MMUEXT_UNPIN_TABLE, t, 0)], other.domid) == (0, 1)
    assert dom0.mmuext([(X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0)], other.domid) == (-E.EPERM, 0)

"""update_va_mapping(_otherdomain) and the flush flags."""
import struct

from abi import errno as E
from abi import xen as X

from .mm_kit import BUF_VA, Guest

P, RW = 0x1, 0x2


def test_remap_a_virtual_address(hv, guest, flushes):
    guest.ctx.write(22 << 12, b"frame 22")
    assert guest.call("update_va_mapping", 20 << 12, guest.mfn(22) << 12 | P | RW, X.UVMF_INVLPG) == 0
    assert guest.ctx.read(20 << 12, 8) == b"frame 22"
    assert flushes.flushes >= 1


def test_refusals(hv, guest, other):
    assert guest.call("update_va_mapping", 20 << 12, guest.tables.l1s[0] << 12 | P | RW, 0) == -E.EBUSY
    assert guest.call("update_va_mapping", 20 << 12, other.mfn(3) << 12 | P, 0) == -E.EBUSY
    assert guest.call("update_va_mapping", 1 << 39, guest.mfn(22) << 12 | P, 0) == -E.EINVAL
    assert guest.call("update_va_mapping", 0xFFFF_8000_0000_0000, 0, 0) == -E.EINVAL


def test_flush_flavours(hv, guest, flushes):
    val = guest.mfn(21) << 12 | P | RW
    for flags in (X.UVMF_TLB_FLUSH | X.UVMF_LOCAL, X.UVMF_TLB_FLUSH | X.UVMF_ALL, X.UVMF_INVLPG | X.UVMF_ALL):
        assert guest.call("update_va_mapping", 21 << 12, val, flags) == 0
    guest.ctx.write(BUF_VA, struct.pack("<Q", 1))
    assert guest.call("update_va_mapping", 21 << 12, val, X.UVMF_TLB_FLUSH | BUF_VA) == 0
    # A bitmap pointer that faults: the entry is updated, the flush reports -EFAULT.
    assert guest.call("update_va_mapping", 21 << 12, val, X.UVMF_INVLPG | 0x7F_0000_0000) == -E.EFAULT


def test_otherdomain(hv, guest, other):
    assert guest.call("update_va_mapping_otherdomain", 21 << 12, other.mfn(3) << 12 | P, 0, other.domid) == -E.EPERM
    assert guest.call("update_va_mapping_otherdomain", 21 << 12, 0, 0, 0x7F00) == -E.ESRCH
    # Clearing an entry needs no rights over the foreign domain.
    assert guest.call("update_va_mapping_otherdomain", 21 << 12, 0, 0, other.domid) == 0
    dom0 = Guest(hv, 64, privileged=True, domid=0)
    assert dom0.call("update_va_mapping_otherdomain", 21 << 12, other.mfn(3) << 12 | P | RW, 0, other.domid) == 0
    other.ctx.write(3 << 12, b"seen by dom0")
    assert dom0.ctx.read(21 << 12, 12) == b"seen by dom0"
    assert dom0.call("update_va_mapping", 21 << 12, 0, 0) == 0

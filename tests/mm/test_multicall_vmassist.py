"""multicall (results written back, no nesting) and vm_assist (Xen's 64-bit PV mask)."""
import struct

from abi import errno as E
from abi import xen as X

from .mm_kit import BUF_VA

NR = X.HYPERCALL_NUMBERS


def test_vm_assist(guest):
    d = guest.domain
    assert guest.call("vm_assist", X.VMASST_CMD_enable, X.VMASST_TYPE_writable_pagetables) == 0
    assert d.vm_assist == 1 << X.VMASST_TYPE_writable_pagetables
    assert guest.call("vm_assist", X.VMASST_CMD_enable, X.VMASST_TYPE_m2p_strict) == 0
    assert guest.call("vm_assist", X.VMASST_CMD_disable, X.VMASST_TYPE_m2p_strict) == 0
    assert guest.call("vm_assist", X.VMASST_CMD_enable, 6) == -E.EINVAL
    assert guest.call("vm_assist", X.VMASST_CMD_enable, 64) == -E.EINVAL
    assert guest.call("vm_assist", 2, X.VMASST_TYPE_4gb_segments) == -E.ENOSYS
    assert d.vm_assist == 1 << X.VMASST_TYPE_writable_pagetables


def _entries(*calls):
    return b"".join(struct.pack("<8Q", op, 0xAAAA, *(list(args) + [0] * 6)[:6]) for op, *args in calls)


def _results(guest, n):
    return [struct.unpack_from("<q", guest.ctx.read(BUF_VA + i * 64 + 8, 8))[0] for i in range(n)]


def test_results_written_back(guest):
    guest.ctx.write(BUF_VA, _entries(
        (NR["vm_assist"], X.VMASST_CMD_enable, X.VMASST_TYPE_pae_extended_cr3),
        (NR["vm_assist"], X.VMASST_CMD_enable, 7),
        (60,),
        (NR["multicall"], BUF_VA, 1),
    ))
    assert guest.call("multicall", BUF_VA, 4) == 0
    assert _results(guest, 4) == [0, -E.EINVAL, -E.ENOSYS, -E.EINVAL]


def test_bad_list(guest):
    assert guest.call("multicall", 0xFFFF_8000_0000_0000, 1) == -E.EFAULT
    assert guest.call("multicall", 0x7F_0000_0000, 1) == -E.EFAULT
    assert guest.call("multicall", 0x7F_0000_0000, 0) == 0


def test_linux_style_batch(hv, guest):
    """mmu_update + update_va_mapping + mmuext_op in one multicall, each result in its entry."""
    l1_slot = guest.l1_slot_maddr(20)
    guest.ctx.write(BUF_VA + 1024, struct.pack("<QQ", l1_slot, guest.mfn(21) << 12 | 0x7))
    guest.ctx.write(BUF_VA + 1056, struct.pack("<I4xQQ", X.MMUEXT_TLB_FLUSH_LOCAL, 0, 0))
    guest.ctx.write(BUF_VA, _entries(
        (NR["mmu_update"], BUF_VA + 1024, 1, BUF_VA + 1040, X.DOMID_SELF),
        (NR["update_va_mapping"], 22 << 12, guest.tables.l1s[0] << 12 | 0x7, X.UVMF_INVLPG),
        (NR["mmuext_op"], BUF_VA + 1056, 1, 0, X.DOMID_SELF),
    ))
    assert guest.call("multicall", BUF_VA, 3) == 0
    assert _results(guest, 3) == [0, -E.EBUSY, 0]
    assert struct.unpack("<I", guest.ctx.read(BUF_VA + 1040, 4))[0] == 1

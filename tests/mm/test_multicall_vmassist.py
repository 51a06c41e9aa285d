"""multicall (results written back, no nesting) and vm_assist (Xen's 64-bit PV mask)."""
import struct

from abi import errno as E
from abi import xen as X

from .helpers import BUF_VA

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

"""set_segment_base, fpu_taskswitch, set/get_debugreg, physdev_op."""
from __future__ import annotations

import struct

from abi import errno as E
from abi import physdev as P
from abi.xen import VMASST_TYPE_architectural_iopl
from abi.xen_x86_64 import SEGBASE_FS, SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL
from pvhyp.pv.change import PvChange

NONCANONICAL = 0x0000_8000_0000_0000


class RecordingArch:
    def __init__(self):
        self.changes = []

    def pv_changed(self, what):
        self.changes.append(what)

    def post(self, fn):
        fn()


def test_segment_bases(guest):
    guest.vcpu.arch = arch = RecordingArch()
    pv = guest.vcpu.pv
    assert guest.call("set_segment_base", SEGBASE_FS, 0x7000_0000) == 0
    assert guest.call("set_segment_base", SEGBASE_GS_USER, 0xFFFF_FFFF_8000_0000) == 0
    assert guest.call("set_segment_base", SEGBASE_GS_KERNEL, 0x1234) == 0
    assert (pv.fs_base, pv.gs_base_user, pv.gs_base_kernel) == (0x7000_0000, 0xFFFF_FFFF_8000_0000, 0x1234)
    assert arch.changes == [PvChange.FS_BASE, PvChange.GS_BASE_USER, PvChange.GS_BASE_KERNEL]
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0xE028) == 0 and pv.gs_sel_user == 0xE02B
    assert pv.gs_base_user == 0 and arch.changes[-1] is PvChange.GS_SEL_USER
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0x2) == 0 and pv.gs_sel_user == 0x2
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0x2B) == 0 and pv.gs_sel_user == 0   # no GDT: NUL


def test_segment_base_errors(guest):
    for which in (SEGBASE_FS, SEGBASE_GS_USER, SEGBASE_GS_KERNEL):
        assert guest.call("set_segment_base", which, NONCANONICAL) == -E.EINVAL
    assert guest.call("set_segment_base", 4, 0) == -E.EINVAL
    assert guest.call("set_segment_base", 0xFFFF_FFFF, 0) == -E.EINVAL
    assert guest.vcpu.pv.fs_base == 0


def test_fpu_taskswitch(guest):
    assert guest.call("fpu_taskswitch", 1) == 0 and guest.vcpu.pv.cr0_ts
    assert guest.call("fpu_taskswitch", 1 << 32) == 0 and not guest.vcpu.pv.cr0_ts   # int: 0


def test_debugreg_addresses(guest):
    assert guest.call("set_debugreg", 0, 0x7FFF_FFFF_F000) == 0
    assert guest.call("get_debugreg", 0) == 0x7FFF_FFFF_F000
    assert guest.call("set_debugreg", 3, 0xFFFF_8800_0000_0000) == 0
    assert guest.call("set_debugreg", 1, 0xFFFF_8000_0000_0000) == -E.EPERM     # hypervisor range
    assert guest.call("set_debugreg", 2, NONCANONICAL) == -E.EPERM


def test_debugreg_status_and_control(guest):
    assert guest.call("set_debugreg", 6, 0) == 0
    assert guest.call("get_debugreg", 6) == 0xFFFF_0FF0
    assert guest.call("set_debugreg", 6, 1 << 32) == -E.EINVAL
    assert guest.call("set_debugreg", 7, 0x3) == 0
    assert guest.call("get_debugreg", 7) == 0x403
    assert guest.call("set_debugreg", 7, 0x2000) == -E.EPERM          # GD
    assert guest.call("set_debugreg", 7, 1 << 40) == -E.EINVAL
    assert guest.call("set_debugreg", 7, 0x1 | 2 << 16) == -E.EPERM   # I/O breakpoint without CR4.DE
    assert guest.call("set_debugreg", 7, 0xC000 | 0x1800) == 0        # reserved bits dropped
    assert guest.call("get_debugreg", 7) == 0x400


def test_debugreg_io_breakpoints_with_cr4_de(guest):
    guest.vcpu.pv.cr4 |= 1 << 3
    assert guest.call("set_debugreg", 7, 0x1 | 2 << 16) == 0
    pv = guest.vcpu.pv
    assert pv.dr7_emul == 0x1 and pv.dr7 == 0x400 | 2 << 16
    assert guest.call("get_debugreg", 7) == 0x401 | 2 << 16
    assert guest.call("set_debugreg", 4, 0) == -E.ENODEV
    assert guest.call("get_debugreg", 5) == -E.ENODEV


def test_debugreg_bad_numbers(guest):
    for reg in (8, 15, 0xFFFF_FFFF, 1 << 40 | 8):
        assert guest.call("set_debugreg", reg, 0) == -E.ENODEV
        assert guest.call("get_debugreg", reg) == -E.ENODEV
    assert guest.call("get_debugreg", 4) == 0xFFFF_0FF0          # DR4 aliases DR6 without CR4.DE


def test_set_iopl_and_iopl_ok(guest):
    pv = guest.vcpu.pv
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iopl, guest.write(0, struct.pack("<I", 1))) == 0
    assert pv.iopl == 1 and pv.iopl_ok(kernel_mode=True) and not pv.iopl_ok(kernel_mode=False)
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iopl, guest.write(0, struct.pack("<I", 0))) == 0
    assert not pv.iopl_ok(kernel_mode=True)            # the kernel counts as ring 1 ...
    guest.domain.vm_assist |= 1 << VMASST_TYPE_architectural_iopl
    assert pv.iopl_ok(kernel_mode=True)                # ... or, architecturally, ring 0
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iopl, guest.write(0, struct.pack("<I", 1))) == 0
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iopl, guest.write(0, struct.pack("<I", 4))) == -E.EINVAL
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iopl, 0x10) == -E.EFAULT
    assert pv.iopl == 1


def test_physdev_other_ops_for_a_domu(guest):
    va = guest.write(0, struct.pack("<QI4x", guest.va(1), 1024))
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iobitmap, va) == 0
    assert guest.vcpu.pv.iobmp_limit == 1024
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iobitmap, guest.write(0, struct.pack("<QI4x", 0, 65537))) == -E.EINVAL
    assert guest.call("physdev_op", P.PHYSDEVOP_set_iobitmap,
                      guest.write(0, struct.pack("<QI4x", 0xFFFF_8000_0000_0000, 8))) == -E.EINVAL
    query = guest.write(0, struct.pack("<II", 3, 0))
    assert guest.call("physdev_op", P.PHYSDEVOP_irq_status_query, query) == 0
    assert struct.unpack("<II", guest.read(0, 8)) == (3, P.XENIRQSTAT_needs_eoi)
    assert guest.call("physdev_op", P.PHYSDEVOP_irq_status_query, guest.write(0, struct.pack("<II", 5000, 0))) == -E.EINVAL
    assert guest.call("physdev_op", P.PHYSDEVOP_eoi, guest.write(0, struct.pack("<I", 1))) == -E.EINVAL
    assert guest.call("physdev_op", P.PHYSDEVOP_map_pirq, guest.va(0)) == -E.EPERM
    assert guest.call("physdev_op", P.PHYSDEVOP_manage_pci_add, guest.va(0)) == -E.EPERM
    assert guest.call("physdev_op", 999, guest.va(0)) == -E.ENOSYS
    gmfn = guest.write(0, struct.pack("<Q", guest.data_mfns[5]))
    assert guest.call("physdev_op", P.PHYSDEVOP_pirq_eoi_gmfn_v2, gmfn) == 0
    assert guest.call("physdev_op", P.PHYSDEVOP_pirq_eoi_gmfn_v2, gmfn) == -E.EBUSY

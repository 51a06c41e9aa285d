"""set_gdt, update_descriptor and check_descriptor against hostile input."""
from __future__ import annotations

import struct

from abi import errno as E
from pvhyp.pv.descriptors import check_descriptor

CODE64_DPL0 = 0x00AF9A000000FFFF          # present, S, code, DPL 0
DATA_DPL3 = 0x00CFF2000000FFFF
NOT_PRESENT_GARBAGE = 0x1234_7FFF_FFFF_FFFF & ~(1 << 47)


def call_gate(selector: int, dpl: int, offset: int = 0x1000, reserved: int = 0) -> int:
    low = (offset & 0xFFFF) | (selector << 16)
    high = ((offset >> 16) & 0xFFFF) << 16 | 1 << 15 | dpl << 13 | 0xC << 8 | reserved
    return high << 32 | low


def test_check_descriptor_raises_dpl_to_ring3():
    fixed = check_descriptor(CODE64_DPL0)
    assert (fixed >> 45) & 3 == 3 and fixed & ~(3 << 45) == CODE64_DPL0
    assert check_descriptor(DATA_DPL3) == DATA_DPL3


def test_check_descriptor_not_present_and_type0_pass_untouched():
    assert check_descriptor(NOT_PRESENT_GARBAGE) == NOT_PRESENT_GARBAGE
    assert check_descriptor(0x0000_8000_0000_0000) == 0x0000_8000_0000_0000


def test_check_descriptor_system_types_refused():
    tss = 0x0000_8900_0000_0067            # present available 64-bit TSS
    ldt = 0x0000_8200_0000_0067
    interrupt_gate = (1 << 15 | 0xE << 8) << 32
    for raw in (tss, ldt, interrupt_gate):
        assert check_descriptor(raw) is None


def test_check_descriptor_call_gate_dpl_moves_into_selector_rpl():
    fixed = check_descriptor(call_gate(0x0818, 3))
    assert (fixed >> 45) & 3 == 0                      # gate DPL forced to 0: using it traps
    assert (fixed >> 16) & 0xFFFF == 0x0818 | 3        # original DPL kept in the RPL
    assert check_descriptor(call_gate(0xE008, 3)) is None     # Xen's own code selector
    assert check_descriptor(call_gate(0xE033, 3)) is not None  # FLAT_KERNEL_CS is fine
    assert check_descriptor(call_gate(0xE00C, 3)) is not None  # LDT selector
    assert check_descriptor(call_gate(0x0818, 3, reserved=0x1)) is None


def test_set_gdt_installs_owned_frames(guest):
    frames = guest.data_mfns[2:4]
    va = guest.write(0, struct.pack("<2Q", *frames))
    assert guest.call("set_gdt", va, 1000) == 0
    pv = guest.vcpu.pv
    assert pv.gdt_ents == 1000 and pv.gdt_frames[:3] == [frames[0], frames[1], 0]


def test_set_gdt_refuses_foreign_and_hypervisor_frames(guest, other_guest):
    foreign = other_guest.data_mfns[0]
    va = guest.write(0, struct.pack("<Q", foreign))
    assert guest.call("set_gdt", va, 10) == -E.EINVAL
    assert guest.call("set_gdt", guest.write(0, struct.pack("<Q", guest.hv.m2p_first_mfn)), 10) == -E.EINVAL
    assert guest.call("set_gdt", guest.write(0, struct.pack("<Q", 1 << 60)), 10) == -E.EINVAL
    assert guest.vcpu.pv.gdt_ents == 0


def test_set_gdt_entry_limits(guest):
    va = guest.write(0, struct.pack("<14Q", *([guest.data_mfns[2]] * 14)))
    assert guest.call("set_gdt", va, 14 * 512 + 1) == -E.EINVAL
    assert guest.call("set_gdt", va, 0xFFFF_FFFF) == -E.EINVAL
    assert guest.call("set_gdt", va, (1 << 32) + 5) == 0        # unsigned int: 5 entries
    assert guest.vcpu.pv.gdt_ents == 5
    assert guest.call("set_gdt", va, 0) == 0
    assert guest.vcpu.pv.gdt_ents == 0


def test_set_gdt_frame_list_fault(guest):
    assert guest.call("set_gdt", guest.va(7, 4096 - 8), 600) == -E.EFAULT
    assert guest.call("set_gdt", 0, 10) == -E.EFAULT


def test_update_descriptor(guest):
    maddr = guest.maddr(3, 16)
    assert guest.call("update_descriptor", maddr, CODE64_DPL0) == 0
    assert struct.unpack("<Q", guest.read(3, 8, 16))[0] == check_descriptor(CODE64_DPL0)


def test_update_descriptor_errors(guest, other_guest):
    assert guest.call("update_descriptor", guest.maddr(3, 4), DATA_DPL3) == -E.EINVAL       # misaligned
    assert guest.call("update_descriptor", guest.maddr(3), 0x0000_8900_0000_0067) == -E.EINVAL
    assert guest.call("update_descriptor", other_guest.maddr(0), DATA_DPL3) == -E.EINVAL
    assert guest.call("update_descriptor", 1 << 62, DATA_DPL3) == -E.EINVAL
    assert other_guest.read(0, 8) == bytes(8)


def test_gdt_frame_with_a_bad_descriptor_is_refused_by_the_mmu_typing(guest):
    guest.write(2, struct.pack("<Q", 0x0000_8900_0000_0067), offset=8 * 7)     # a TSS in slot 7
    va = guest.write(0, struct.pack("<Q", guest.data_mfns[2]))
    assert guest.call("set_gdt", va, 16) == -E.EINVAL


def test_gdt_frame_fixups_applied_in_place(guest):
    guest.write(2, struct.pack("<Q", CODE64_DPL0), offset=8)
    assert guest.call("set_gdt", guest.write(0, struct.pack("<Q", guest.data_mfns[2])), 16) == 0
    assert struct.unpack("<Q", guest.read(2, 8, 8))[0] == check_descriptor(CODE64_DPL0)


def test_a_frame_the_hypervisor_writes_cannot_become_a_gdt(guest):
    from abi import vcpu as V
    arg = guest.write(0, struct.pack("<QII", guest.data_mfns[4], 0, 0))
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_info, 0, arg) == 0
    assert guest.call("set_gdt", guest.write(0, struct.pack("<Q", guest.data_mfns[4])), 16) == -E.EINVAL


def test_update_descriptor_on_an_installed_gdt_frame(guest):
    assert guest.call("set_gdt", guest.write(0, struct.pack("<Q", guest.data_mfns[2])), 512) == 0
    assert guest.call("update_descriptor", guest.maddr(2, 64), CODE64_DPL0) == 0
    assert guest.call("update_descriptor", guest.maddr(2, 72), 0x0000_8900_0000_0067) == -E.EINVAL
    assert guest.read(2, 8, 72) == bytes(8)


def test_gs_user_selector_takes_the_descriptor_base_or_becomes_nul(guest):
    from abi.xen_x86_64 import SEGBASE_GS_USER_SEL
    pv = guest.vcpu.pv
    tls = 0x00CF_F200_0000_FFFF | 0x12 << 56 | 0x34 << 32 | 0x5678 << 16      # data, DPL3, base 0x12345678
    kernel_only = 0x00CF_9200_0000_FFFF                                         # DPL 0: typing raises it to 3
    guest.write(2, struct.pack("<QQQ", 0, tls, kernel_only))
    assert guest.call("set_gdt", guest.write(0, struct.pack("<Q", guest.data_mfns[2])), 3) == 0
    pv.gs_base_user = 0xDEAD
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0x8) == 0
    assert (pv.gs_sel_user, pv.gs_base_user) == (0xB, 0x12345678)
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0x10) == 0        # DPL raised to 3 by the typing
    assert (pv.gs_sel_user, pv.gs_base_user) == (0x13, 0)
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0x18) == 0        # beyond gdt_ents: would fault
    assert (pv.gs_sel_user, pv.gs_base_user) == (0, 0)
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0xE02B) == 0      # Xen's flat data selector
    assert (pv.gs_sel_user, pv.gs_base_user) == (0xE02B, 0)
    assert guest.call("set_segment_base", SEGBASE_GS_USER_SEL, 0x7) == 0         # LDT, none loaded
    assert (pv.gs_sel_user, pv.gs_base_user) == (0, 0)

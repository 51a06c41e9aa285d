"""set_trap_table, set_callbacks, callback_op, stack_switch: Xen's semantics and errors."""
from __future__ import annotations

import struct

from abi import callback as C
from abi import errno as E
from abi.xen_x86_64 import FLAT_KERNEL_CS

NONCANONICAL = 0x0000_8000_0000_0000


def trap_entries(*entries) -> bytes:
    return b"".join(struct.pack("<BBH4xQ", *e) for e in entries)


def test_trap_table_entries_until_zero_address(guest):
    va = guest.write(0, trap_entries((14, 0, 0xE030, 0xFFFF_8800_1000_0000 + 0x10),
                                     (0x80, 3 | 4, 0xE033, 0x1234), (6, 0, 0xE033, 0)))
    assert guest.call("set_trap_table", va) == 0
    table = guest.vcpu.pv.trap_table
    assert table[14].address == 0xFFFF_8800_1000_0010 and table[14].cs == 0xE033   # RPL forced to 3
    assert table[0x80].dpl == 3 and table[0x80].masks_events
    assert 6 not in table


def test_trap_table_null_clears_everything(guest):
    guest.call("set_trap_table", guest.write(0, trap_entries((3, 3, 0xE033, 0x1000), (0, 0, 0, 0))))
    assert guest.vcpu.pv.trap_table
    assert guest.call("set_trap_table", 0) == 0
    assert guest.vcpu.pv.trap_table == {}


def test_trap_table_non_canonical_stops_with_einval_keeping_earlier_entries(guest):
    va = guest.write(0, trap_entries((1, 0, 0xE033, 0x1000), (2, 0, 0xE033, NONCANONICAL), (3, 0, 0xE033, 0x3000)))
    assert guest.call("set_trap_table", va) == -E.EINVAL
    assert 1 in guest.vcpu.pv.trap_table and 3 not in guest.vcpu.pv.trap_table


def test_trap_table_running_off_the_mapping_faults(guest):
    va = guest.write(7, trap_entries((1, 0, 0xE033, 0x1000)), offset=4096 - 16)
    assert guest.call("set_trap_table", va) == -E.EFAULT
    assert guest.call("set_trap_table", 0xFFFF_8000_0000_0000) == -E.EFAULT


def test_callback_register_each_type(guest):
    pv = guest.vcpu.pv
    for cb_type, field in ((C.CALLBACKTYPE_event, "event_callback"), (C.CALLBACKTYPE_failsafe, "failsafe_callback"),
                           (C.CALLBACKTYPE_syscall, "syscall_callback"), (C.CALLBACKTYPE_syscall32, "syscall32_callback"),
                           (C.CALLBACKTYPE_sysenter, "sysenter_callback")):
        va = guest.write(0, struct.pack("<HH4xQ", cb_type, C.CALLBACKF_mask_events, 0xFFFF_FFFF_8100_0000 + cb_type))
        assert guest.call("callback_op", C.CALLBACKOP_register, va) == 0
        assert getattr(pv, field).address == 0xFFFF_FFFF_8100_0000 + cb_type
    assert pv.failsafe_callback.masks_events and pv.syscall_callback.masks_events


def test_callback_mask_flag_cleared_by_reregistering(guest):
    pv = guest.vcpu.pv
    guest.call("callback_op", C.CALLBACKOP_register, guest.write(0, struct.pack("<HH4xQ", C.CALLBACKTYPE_syscall, 1, 0x5000)))
    guest.call("callback_op", C.CALLBACKOP_register, guest.write(0, struct.pack("<HH4xQ", C.CALLBACKTYPE_syscall, 0, 0x6000)))
    assert pv.syscall_callback.address == 0x6000 and not pv.syscall_callback.masks_events


def test_callback_errors(guest):
    bad_type = guest.write(0, struct.pack("<HH4xQ", 9, 0, 0x5000))
    assert guest.call("callback_op", C.CALLBACKOP_register, bad_type) == -E.ENOSYS
    bad_addr = guest.write(1, struct.pack("<HH4xQ", C.CALLBACKTYPE_event, 0, NONCANONICAL))
    assert guest.call("callback_op", C.CALLBACKOP_register, bad_addr) == -E.EINVAL
    assert guest.call("callback_op", C.CALLBACKOP_register, 0xdead_0000) == -E.EFAULT
    assert guest.call("callback_op", 2, guest.va(0)) == -E.ENOSYS
    assert guest.call("callback_op", 1 << 32 | C.CALLBACKOP_register, bad_type) == -E.ENOSYS   # int cmd
    for cb_type in (C.CALLBACKTYPE_event, C.CALLBACKTYPE_failsafe, C.CALLBACKTYPE_syscall):
        assert guest.call("callback_op", C.CALLBACKOP_unregister, guest.write(0, struct.pack("<HH", cb_type, 0))) == -E.EINVAL
    assert guest.call("callback_op", C.CALLBACKOP_unregister, guest.write(0, struct.pack("<HH", 99, 0))) == -E.ENOSYS


def test_nmi_callback_is_trap_2_and_can_be_unregistered(guest):
    va = guest.write(0, struct.pack("<HH4xQ", C.CALLBACKTYPE_nmi, 0, 0x7000))
    assert guest.call("callback_op", C.CALLBACKOP_register, va) == 0
    nmi = guest.vcpu.pv.trap_table[2]
    assert (nmi.address, nmi.cs, nmi.masks_events) == (0x7000, FLAT_KERNEL_CS, True)
    assert guest.call("callback_op", C.CALLBACKOP_unregister, guest.write(0, struct.pack("<HH", C.CALLBACKTYPE_nmi, 0))) == 0
    assert 2 not in guest.vcpu.pv.trap_table


def test_set_callbacks_ignores_non_canonical_and_always_succeeds(guest):
    pv = guest.vcpu.pv
    assert guest.call("set_callbacks", 0x1000, NONCANONICAL, 0x3000) == 0
    assert (pv.event_callback.address, pv.failsafe_callback.address, pv.syscall_callback.address) == (0x1000, 0, 0x3000)


def test_stack_switch_forces_ring3_selector(guest):
    assert guest.call("stack_switch", 0xE028, 0xFFFF_C000_0000_1000) == 0
    assert (guest.vcpu.pv.kernel_ss, guest.vcpu.pv.kernel_sp) == (0xE02B, 0xFFFF_C000_0000_1000)


def test_callback_state_is_per_vcpu(guest):
    guest.call("set_callbacks", 0x1000, 0x2000, 0x3000, vcpu=guest.domain.vcpus[1])
    assert guest.vcpu.pv.event_callback.address == 0

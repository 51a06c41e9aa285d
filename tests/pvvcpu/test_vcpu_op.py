"""vcpu_op: bring-up, vcpu_info placement, runstate area and info, argument checks."""
from __future__ import annotations

import struct

from abi import errno as E
from abi import vcpu as V
from abi.arch_x86_xen import VGCF_in_kernel, vcpu_guest_context
from abi.fast import codec
from abi.sched import SHUTDOWN_poweroff
from abi.xen import VMASST_TYPE_runstate_update_flag

CTXT = codec(vcpu_guest_context)
NONCANONICAL = 0x0000_8000_0000_0000


def context(guest, **changes):
    ctxt = CTXT.parse(bytes(CTXT.size))
    ctxt["flags"] = VGCF_in_kernel
    ctxt["user_regs"].update(rip=0xFFFF_FFFF_8100_0000, rsp=0xFFFF_C900_0000_0000, rflags=0x3202)
    ctxt["ctrlreg"][3] = guest.l4 << 12
    ctxt["kernel_sp"] = 0xFFFF_C900_0000_1000
    ctxt["event_callback_eip"] = 0xFFFF_FFFF_8100_1000
    ctxt["trap_ctxt"][14].update(vector=14, cs=0xE030, address=0xFFFF_FFFF_8100_2000)
    for key, value in changes.items():
        ctxt[key] = value
    return ctxt


def put_context(guest, ctxt) -> int:
    raw = CTXT.build(ctxt)
    guest.write(2, raw[:4096])
    guest.write(3, raw[4096:])
    return guest.va(2)


def test_vcpuid_checked(guest):
    assert guest.call("vcpu_op", V.VCPUOP_is_up, 2, 0) == -E.ENOENT
    assert guest.call("vcpu_op", V.VCPUOP_is_up, 0xFFFF_FFFF, 0) == -E.ENOENT
    assert guest.call("vcpu_op", V.VCPUOP_is_up, 1 << 32, 0) == 1          # unsigned int: vCPU 0
    assert guest.call("vcpu_op", 99, 0, 0) == -E.ENOSYS
    assert guest.call("vcpu_op", V.VCPUOP_get_physid, 0, guest.va(0)) == -E.EINVAL


def test_initialise_up_down(guest):
    assert guest.call("vcpu_op", V.VCPUOP_is_up, 1, 0) == 0
    assert guest.call("vcpu_op", V.VCPUOP_up, 1, 0) == -E.EINVAL
    assert guest.call("vcpu_op", V.VCPUOP_initialise, 1, put_context(guest, context(guest))) == 0
    v1 = guest.domain.vcpus[1]
    pv = v1.pv
    assert pv.trap_table[14].address == 0xFFFF_FFFF_8100_2000 and pv.trap_table[14].cs == 0xE033
    assert pv.iopl == 3 and pv.initial_user_regs["rflags"] == 0x0202
    assert v1.guest_table == guest.l4 and v1.kernel_mode
    assert guest.call("vcpu_op", V.VCPUOP_initialise, 1, put_context(guest, context(guest))) == -E.EEXIST
    assert guest.call("vcpu_op", V.VCPUOP_up, 1, 0) == 0
    assert guest.call("vcpu_op", V.VCPUOP_is_up, 1, 0) == 1
    assert guest.call("vcpu_op", V.VCPUOP_down, 1, 0) == 0
    assert guest.call("vcpu_op", V.VCPUOP_is_up, 1, 0) == 0
    assert not guest.domain.is_shut_down
    assert guest.call("vcpu_op", V.VCPUOP_down, 0, 0) == 0                # the last one: power off
    assert guest.domain.is_shut_down and guest.domain.shutdown_reason == SHUTDOWN_poweroff


def test_initialise_rejects_hostile_contexts(guest, other_guest):
    regs = dict(context(guest)["user_regs"], rip=NONCANONICAL)
    bad = [
        context(guest, user_regs=regs),
        context(guest, kernel_sp=NONCANONICAL),
        context(guest, ldt_base=0x1234, ldt_ents=1),
        context(guest, ldt_base=0x1000, ldt_ents=8193),
        context(guest, ldt_base=0xFFFF_8000_0000_0000, ldt_ents=0),
        context(guest, gdt_ents=100, gdt_frames=[other_guest.data_mfns[0]] + [0] * 15),
        context(guest, ctrlreg=[0, 0, 0, other_guest.l4 << 12, 0, 0, 0, 0]),
        context(guest, flags=0),                      # user mode without a user page table
    ]
    ctxt = context(guest)
    ctxt["trap_ctxt"][3]["address"] = NONCANONICAL
    bad.append(ctxt)
    for ctxt in bad:
        assert guest.call("vcpu_op", V.VCPUOP_initialise, 1, put_context(guest, ctxt)) == -E.EINVAL
        assert not guest.domain.vcpus[1].pv.is_initialised
    assert guest.call("vcpu_op", V.VCPUOP_initialise, 1, guest.va(7, 4000)) == -E.EFAULT
    assert guest.call("vcpu_op", V.VCPUOP_initialise, 0, put_context(guest, context(guest))) == -E.EEXIST


def test_register_vcpu_info_moves_it(guest):
    v = guest.vcpu
    mem = guest.hv.memory
    old = v.vcpu_info_maddr
    mem.buf[old + 1] = 0                           # upcall unmasked: must travel with it
    arg = guest.write(0, struct.pack("<QII", guest.data_mfns[4], 128, 0))
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_info, 0, arg) == 0
    assert v.vcpu_info_maddr == guest.maddr(4, 128)
    info = guest.read(4, 64, 128)
    assert info[0] == 1 and info[1] == 0 and info[8:16] == b"\xff" * 8
    assert struct.unpack_from("<I", info, 32)[0] % 2 == 0 and struct.unpack_from("<Q", info, 48)[0] > 0  # time record
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_info, 0, arg) == -E.EINVAL       # only once


def test_register_vcpu_info_errors(guest, other_guest):
    def register(vcpu_id, mfn, offset):
        return guest.call("vcpu_op", V.VCPUOP_register_vcpu_info, vcpu_id, guest.write(0, struct.pack("<QII", mfn, offset, 0)))

    assert register(0, guest.data_mfns[4], 4096 - 63) == -E.ENXIO
    assert register(0, guest.data_mfns[4], 4) == -E.ENXIO
    assert register(0, guest.data_mfns[4], 0xFFFF_FFFF) == -E.ENXIO
    assert register(0, other_guest.data_mfns[0], 0) == -E.EINVAL
    assert register(0, guest.hv.m2p_first_mfn, 0) == -E.EINVAL
    assert register(0, 1 << 50, 0) == -E.EINVAL
    guest.domain.vcpus[1].online = True
    assert register(1, guest.data_mfns[4], 0) == -E.EINVAL       # another vCPU that is up
    guest.domain.vcpus[1].online = False
    assert register(1, guest.data_mfns[4], 0) == 0               # ... or down: allowed
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_info, 0, 0) == -E.EFAULT


def test_runstate_area_and_info(guest, clock):
    hv = guest.hv
    area = guest.va(4, 64)
    assert guest.call("vcpu_op", V.VCPUOP_register_runstate_memory_area, 0, guest.write(0, struct.pack("<Q", area))) == 0
    state, entry, *times = struct.unpack("<i4xQ4Q", guest.read(4, 48, 64))
    assert state == V.RUNSTATE_offline and entry == clock.now_ns()

    hv.sched.nr_pcpus = 1
    assert hv.sched.wait_to_run(guest.vcpu)
    clock.advance(7_000_000)
    state, entry, *times = struct.unpack("<i4xQ4Q", guest.read(4, 48, 64))
    assert state == V.RUNSTATE_running
    assert guest.call("vcpu_op", V.VCPUOP_get_runstate_info, 0, guest.va(5)) == 0
    state, entry, *times = struct.unpack("<i4xQ4Q", guest.read(5, 48))
    assert state == V.RUNSTATE_running and times[V.RUNSTATE_running] == 7_000_000
    hv.sched.deschedule(guest.vcpu)
    state, entry, *times = struct.unpack("<i4xQ4Q", guest.read(4, 48, 64))
    assert state == V.RUNSTATE_runnable and times[V.RUNSTATE_running] == 7_000_000
    assert guest.call("vcpu_op", V.VCPUOP_get_runstate_info, 0, 0xFFFF_8000_0000_0000) == -E.EFAULT


def test_runstate_update_flag_brackets_the_copy(guest, clock, monkeypatch):
    import pvhyp.sched
    hv = guest.hv
    guest.domain.vm_assist |= 1 << VMASST_TYPE_runstate_update_flag
    area = guest.va(4)
    guest.call("vcpu_op", V.VCPUOP_register_runstate_memory_area, 0, guest.write(0, struct.pack("<Q", area)))
    seen = []
    real_copy = pvhyp.sched.copy_to_guest

    def spying_copy(vcpu, va, data):
        real_copy(vcpu, va, data)
        seen.append((va - area, len(data), guest.read(4, 1, 15)[0] & 0x80))

    monkeypatch.setattr(pvhyp.sched, "copy_to_guest", spying_copy)
    hv.sched.wait_to_run(guest.vcpu)
    # Each runstate change: flag set in the top byte, the whole record (flag still set), flag cleared.
    assert seen[:3] == [(15, 1, 0x80), (0, 48, 0x80), (15, 1, 0)]
    assert struct.unpack("<Q", guest.read(4, 8, 8))[0] >> 63 == 0


def test_runstate_area_argument_checks(guest):
    hole = guest.write(0, struct.pack("<Q", 0xFFFF_8000_0000_0000))
    assert guest.call("vcpu_op", V.VCPUOP_register_runstate_memory_area, 0, hole) == -E.EFAULT
    unmapped = guest.write(0, struct.pack("<Q", 0x1000))
    assert guest.call("vcpu_op", V.VCPUOP_register_runstate_memory_area, 0, unmapped) == 0   # Xen ignores the copy
    assert guest.call("vcpu_op", V.VCPUOP_register_runstate_memory_area, 0, 0x1000) == -E.EFAULT


def test_send_nmi(guest):
    assert guest.call("vcpu_op", V.VCPUOP_send_nmi, 1, guest.va(0)) == -E.EINVAL
    assert guest.call("vcpu_op", V.VCPUOP_send_nmi, 1, 0) == 0
    assert guest.domain.vcpus[1].pv.nmi_pending

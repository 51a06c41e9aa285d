"""stack_switch, fpu_taskswitch, set/get_debugreg, set_segment_base (Xen: pv/misc-hypercalls.c)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import errno as E
from abi.xen_x86_64 import SEGBASE_FS, SEGBASE_GS_KERNEL, SEGBASE_GS_USER, SEGBASE_GS_USER_SEL
from hypercalls import hypercall
from hypercalls.c_args import c_int, c_uint
from pvhyp.domain import pv_of
from pvhyp.pv import state as pv_state
from pvhyp.pv.change import PvChange

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

_SEGMENT_BASE = {SEGBASE_FS: PvChange.FS_BASE, SEGBASE_GS_USER: PvChange.GS_BASE_USER,
                 SEGBASE_GS_KERNEL: PvChange.GS_BASE_KERNEL}


@hypercall("stack_switch")
def do_stack_switch(ctx: HypercallContext, ss: int, esp: int) -> int:
    pv = pv_of(ctx.vcpu)
    pv.kernel_ss = pv_state.fixup_guest_selector(ss) & 0xFFFF_FFFF_FFFF_FFFF
    pv.kernel_sp = esp
    return 0


@hypercall("fpu_taskswitch")
def do_fpu_taskswitch(ctx: HypercallContext, set_ts: int) -> int:
    return pv_state.fpu_taskswitch(ctx.vcpu, c_int(set_ts) != 0)


@hypercall("set_debugreg")
def do_set_debugreg(ctx: HypercallContext, reg: int, value: int) -> int:
    reg = c_int(reg)
    # Xen's set_debugreg takes the register as unsigned int.
    return pv_state.set_debugreg(ctx.vcpu, reg & 0xFFFF_FFFF, value)


@hypercall("get_debugreg")
def do_get_debugreg(ctx: HypercallContext, reg: int) -> int:
    return pv_state.get_debugreg(ctx.vcpu, c_uint(reg))


@hypercall("set_segment_base")
def do_set_segment_base(ctx: HypercallContext, which: int, base: int) -> int:
    which = c_uint(which)
    if which in _SEGMENT_BASE:
        return pv_state.set_segment_base(ctx.vcpu, _SEGMENT_BASE[which], base)
    if which == SEGBASE_GS_USER_SEL:
        return pv_state.set_gs_user_selector(ctx.vcpu, base)
    return -E.EINVAL

"""HYPERVISOR_callback_op (Xen: pv/callback.c do_callback_op)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import callback as C
from abi import errno as E
from hypercalls import hypercall
from hypercalls.c_args import c_int
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from pvhyp.domain import VCPU
    from pvhyp.hypercall_table import HypercallContext

_CALLBACK_FIELD = {
    C.CALLBACKTYPE_event: "event_callback",
    C.CALLBACKTYPE_failsafe: "failsafe_callback",
    C.CALLBACKTYPE_syscall: "syscall_callback",
    C.CALLBACKTYPE_syscall32: "syscall32_callback",
    C.CALLBACKTYPE_sysenter: "sysenter_callback",
}


def register_guest_callback(vcpu: VCPU, cb_type: int, flags: int, address: int) -> int:
    if not pv_state.is_canonical_address(address):
        return -E.EINVAL
    if cb_type == C.CALLBACKTYPE_nmi:
        return pv_state.register_guest_nmi_callback(vcpu, address)
    field = _CALLBACK_FIELD.get(cb_type)
    if field is None:
        return -E.ENOSYS
    callback = getattr(vcpu.pv, field)
    callback.address = address
    if cb_type != C.CALLBACKTYPE_event:         # the event callback's masking is the upcall's own
        callback.masks_events = bool(flags & C.CALLBACKF_mask_events)
    return 0


def unregister_guest_callback(vcpu: VCPU, cb_type: int) -> int:
    if cb_type == C.CALLBACKTYPE_nmi:
        pv_state.unregister_guest_nmi_callback(vcpu)
        return 0
    return -E.EINVAL if cb_type in _CALLBACK_FIELD else -E.ENOSYS


@hypercall("callback_op")
def do_callback_op(ctx: HypercallContext, cmd: int, arg: int) -> int:
    cmd = c_int(cmd)
    if cmd == C.CALLBACKOP_register:
        reg = ctx.read_struct(C.callback_register, arg)
        return register_guest_callback(ctx.vcpu, reg["type"], reg["flags"], reg["address"])
    if cmd == C.CALLBACKOP_unregister:
        unreg = ctx.read_struct(C.callback_unregister, arg)
        return unregister_guest_callback(ctx.vcpu, unreg["type"])
    return -E.ENOSYS

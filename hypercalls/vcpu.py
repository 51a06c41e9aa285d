"""HYPERVISOR_vcpu_op (Xen: arch/x86/domain.c do_vcpu_op, common/domain.c common_vcpu_op)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi import errno as E
from abi import vcpu as V
from abi.arch_x86_xen import vcpu_guest_context
from abi.sched import SHUTDOWN_poweroff
from hypercalls import hypercall
from hypercalls.c_args import c_int, c_uint, guest_handle_okay
from hypercalls.sched import domain_shutdown
from pvhyp.domain import pv_of
from pvhyp.pv import state as pv_state
from pvhyp.time import MILLISECS, STIME_DELTA_MAX

if TYPE_CHECKING:
    from construct import Construct

    from pvhyp.domain import VCPU
    from pvhyp.hypercall_table import HypercallContext


def _is_initialised(vcpu: VCPU) -> bool:
    return pv_of(vcpu).is_initialised or vcpu.online


def _guest_pointer(area: dict[str, Any]) -> int:
    pointer: int = area["addr"]["p"] if isinstance(area["addr"], dict) else area["addr"]
    return pointer


def vcpu_initialise(ctx: HypercallContext, v: VCPU, arg: int) -> int:
    if not v.vcpu_info_maddr:
        return -E.EINVAL            # no vcpu_info yet (beyond the legacy 32): Xen's dummy_vcpu_info
    ctxt = ctx.read_struct(vcpu_guest_context, arg)
    with pv_state.domain_lock(ctx.domain):
        if _is_initialised(v):
            return -E.EEXIST
        return pv_state.arch_set_info_guest(v, ctxt)


def vcpu_down(ctx: HypercallContext, v: VCPU) -> int:
    domain = ctx.domain
    if not any(other.online for other in domain.vcpus if other is not v):
        return domain_shutdown(domain, SHUTDOWN_poweroff)
    if v.online:
        ctx.hv.sched.vcpu_down(v)
    return 0


def register_area(ctx: HypercallContext, v: VCPU, struct: Construct, field: str, arg: int) -> int:
    """register_runstate_memory_area / register_vcpu_time_memory_area: remember a guest address."""
    va = _guest_pointer(ctx.read_struct(struct, arg))
    if not guest_handle_okay(ctx, va, 1, 48):
        return -E.EFAULT
    setattr(v.pv, field, va)
    return 0


@hypercall("vcpu_op")
def do_vcpu_op(ctx: HypercallContext, cmd: int, vcpuid: int, arg: int) -> int:
    cmd, vcpuid = c_int(cmd), c_uint(vcpuid)
    domain = ctx.domain
    if vcpuid >= len(domain.vcpus):
        return -E.ENOENT
    v = domain.vcpus[vcpuid]
    hv = ctx.hv
    current = v is ctx.vcpu

    if cmd == V.VCPUOP_initialise:
        return vcpu_initialise(ctx, v, arg)
    if cmd == V.VCPUOP_up:
        with pv_state.domain_lock(domain):
            if not _is_initialised(v):
                return -E.EINVAL
        hv.sched.vcpu_up(v)
        return 0
    if cmd == V.VCPUOP_down:
        return vcpu_down(ctx, v)
    if cmd == V.VCPUOP_is_up:
        return int(v.online)
    if cmd == V.VCPUOP_get_runstate_info:
        info = hv.sched.runstate_info(v)
        ctx.write_struct(V.vcpu_runstate_info, arg, info)
        return 0
    if cmd == V.VCPUOP_set_periodic_timer:
        period = ctx.read_struct(V.vcpu_set_periodic_timer, arg)["period_ns"]
        if period < MILLISECS or period > STIME_DELTA_MAX:
            return -E.EINVAL
        hv.time.set_periodic_timer(v, period)
        return 0
    if cmd == V.VCPUOP_stop_periodic_timer:
        hv.time.set_periodic_timer(v, 0)
        return 0
    if cmd == V.VCPUOP_set_singleshot_timer:
        if not current:
            return -E.EINVAL
        request = ctx.read_struct(V.vcpu_set_singleshot_timer, arg)
        hv.time.set_singleshot_timer(v, request["timeout_abs_ns"])
        return 0
    if cmd == V.VCPUOP_stop_singleshot_timer:
        if not current:
            return -E.EINVAL
        hv.time.stop_singleshot_timer(v)
        return 0
    if cmd == V.VCPUOP_register_vcpu_info:
        info = ctx.read_struct(V.vcpu_register_vcpu_info, arg)
        with pv_state.domain_lock(domain):
            rc = pv_state.map_vcpu_info(v, ctx.vcpu, info["mfn"], info["offset"])
        hv.time.update_vcpu_system_time(v)
        return rc
    if cmd == V.VCPUOP_register_runstate_memory_area:
        rc = register_area(ctx, v, V.vcpu_register_runstate_memory_area, "runstate_guest", arg)
        if rc == 0:
            hv.sched.update_runstate_area(v, live=not current)
        return rc
    if cmd == V.VCPUOP_register_vcpu_time_memory_area:
        rc = register_area(ctx, v, V.vcpu_register_time_memory_area, "time_info_guest", arg)
        if rc == 0:
            hv.time.update_vcpu_system_time(v)
        return rc
    if cmd == V.VCPUOP_send_nmi:
        if arg:
            return -E.EINVAL
        pv = pv_of(v)
        if not pv.nmi_pending:
            pv.nmi_pending = True
            v.kick()
        return 0
    if cmd == V.VCPUOP_get_physid:
        return -E.EINVAL            # only for a hardware domain's pinned vCPUs
    return -E.ENOSYS

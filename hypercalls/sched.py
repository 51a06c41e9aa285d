"""HYPERVISOR_sched_op and the legacy sched_op_compat (Xen: common/sched/core.c)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from abi import errno as E
from abi import sched as S
from hypercalls import hypercall
from hypercalls.c_args import c_int, guest_handle_okay
from pvhyp.event_channel import evtchn_port_is_pending
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from pvhyp.domain import Domain
    from pvhyp.hypercall_table import HypercallContext

MAX_POLL_PORTS = 128            # Xen's "fairly arbitrary limit"


def domain_shutdown(domain: Domain, reason: int) -> int:
    """A recorded SCHEDOP_shutdown_code wins over the reason given now, as in Xen."""
    with domain.lock:
        if domain.shutdown_code is None:
            domain.shutdown_code = reason & 0xFF
        reason = domain.shutdown_code
    domain.shutdown(reason)
    return 0


def vcpu_block_enable_events(ctx: HypercallContext) -> None:
    pv_state.local_event_delivery_enable(ctx.vcpu)
    ctx.hv.sched.block(ctx.vcpu)


def evtchn_port_poll(domain: Domain, port: int) -> int:
    """1 if `port` is pending, 0 if not, -EINVAL if it is not a port of `domain`."""
    evtchn = domain.evtchn
    if evtchn is None or not evtchn.port_is_valid(port):
        return -E.EINVAL
    return int(evtchn_port_is_pending(domain, port))


def do_poll(ctx: HypercallContext, poll: dict[str, Any]) -> int:
    nr_ports = poll["nr_ports"]
    if nr_ports > MAX_POLL_PORTS:
        return -E.EINVAL
    if not guest_handle_okay(ctx, poll["ports"], nr_ports, 4):
        return -E.EFAULT
    vcpu = ctx.vcpu
    if pv_state.local_events_need_delivery(vcpu):
        return 0
    ports: list[int] = []
    for i in range(nr_ports):
        port = struct.unpack("<I", ctx.read(poll["ports"] + 4 * i, 4))[0]
        rc = evtchn_port_poll(ctx.domain, port)
        if rc:
            return 0 if rc > 0 else rc
        ports.append(port)
    ctx.hv.sched.poll(vcpu, tuple(ports), poll["timeout"])
    return 0


@hypercall("sched_op")
def do_sched_op(ctx: HypercallContext, cmd: int, arg: int) -> int:
    cmd = c_int(cmd)
    if cmd == S.SCHEDOP_yield:
        ctx.hv.sched.yield_(ctx.vcpu)
        return 0
    if cmd == S.SCHEDOP_block:
        vcpu_block_enable_events(ctx)
        return 0
    if cmd == S.SCHEDOP_shutdown:
        reason = ctx.read_struct(S.sched_shutdown, arg)["reason"]
        return domain_shutdown(ctx.domain, reason)
    if cmd == S.SCHEDOP_shutdown_code:
        reason = ctx.read_struct(S.sched_shutdown, arg)["reason"]
        with ctx.domain.lock:
            if ctx.domain.shutdown_code is None:
                ctx.domain.shutdown_code = reason & 0xFF
        return 0
    if cmd == S.SCHEDOP_poll:
        return do_poll(ctx, ctx.read_struct(S.sched_poll, arg))
    if cmd == S.SCHEDOP_remote_shutdown:
        request = ctx.read_struct(S.sched_remote_shutdown, arg)
        target = ctx.hv.get_domain(request["domain_id"])
        if target is None:
            return -E.ESRCH
        rc = ctx.hv.xsm.schedop_shutdown(ctx.domain, target)
        if rc:
            return rc
        return domain_shutdown(target, request["reason"])
    if cmd == S.SCHEDOP_watchdog:
        request = ctx.read_struct(S.sched_watchdog, arg)
        return ctx.hv.time.domain_watchdog(ctx.domain, request["id"], request["timeout"])
    if cmd == S.SCHEDOP_pin_override:
        if not ctx.domain.is_privileged:
            return -E.EPERM
        pcpu = ctx.read_struct(S.sched_pin_override, arg)["pcpu"]
        if pcpu >= ctx.hv.sched.nr_pcpus:
            return -E.EINVAL
        return 0                        # threads have no pinning: the override is accepted and moot
    return -E.ENOSYS


@hypercall("sched_op_compat")
def do_sched_op_compat(ctx: HypercallContext, cmd: int, arg: int) -> int:
    cmd = c_int(cmd)
    if cmd == S.SCHEDOP_yield:
        ctx.hv.sched.yield_(ctx.vcpu)
        return 0
    if cmd == S.SCHEDOP_block:
        vcpu_block_enable_events(ctx)
        return 0
    if cmd == S.SCHEDOP_shutdown:
        return domain_shutdown(ctx.domain, arg & 0xFF)
    return -E.ENOSYS

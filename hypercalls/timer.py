"""HYPERVISOR_set_timer_op (Xen: common/sched/core.c do_set_timer_op)."""
from __future__ import annotations

from hypercalls import hypercall


@hypercall("set_timer_op")
def do_set_timer_op(ctx, timeout):
    return ctx.hv.time.set_timer_op(ctx.vcpu, timeout)

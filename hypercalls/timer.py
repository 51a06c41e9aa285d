"""HYPERVISOR_set_timer_op (Xen: common/sched/core.c do_set_timer_op)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hypercalls import hypercall

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext


@hypercall("set_timer_op")
def do_set_timer_op(ctx: HypercallContext, timeout: int) -> int:
    return ctx.hv.time.set_timer_op(ctx.vcpu, timeout)

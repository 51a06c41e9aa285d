"""vm_assist: switch on the hypervisor's optional help for PV guests (common/domain.c)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import errno as E
from abi import xen as X
from hypercalls import hypercall
from pvhyp.pv.state import PV64_VM_ASSIST_MASK

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

BITS_PER_LONG = 64


@hypercall("vm_assist")
def do_vm_assist(ctx: HypercallContext, cmd: int, type_: int) -> int:
    cmd &= 0xFFFF_FFFF
    type_ &= 0xFFFF_FFFF
    if type_ >= BITS_PER_LONG or not PV64_VM_ASSIST_MASK >> type_ & 1:
        return -E.EINVAL
    d = ctx.domain
    if cmd == X.VMASST_CMD_enable:
        with d.lock:
            d.vm_assist |= 1 << type_
        return 0
    if cmd == X.VMASST_CMD_disable:
        with d.lock:
            d.vm_assist &= ~(1 << type_)
        return 0
    return -E.ENOSYS

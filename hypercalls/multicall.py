"""multicall: several hypercalls in one trap (common/multicall.c).

Each entry's result is written back into its `result` field; the batch stops
early on a fault writing it back, and after `iret` (which does not return to
the batch). A multicall inside a multicall is refused with -EINVAL, as Xen
refuses re-entry.
"""
from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

from abi import errno as E
from abi import xen as X
from hypercalls import hypercall
from pvhyp.guest_access import GuestFault, handle_ok

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

_ENTRY = struct.Struct("<8Q")            # op, result, args[6]
_RESULT = struct.Struct("<Q")
assert _ENTRY.size == X.multicall_entry.sizeof()


class _InMulticall(threading.local):
    """The vCPUs (ids) inside a multicall on the calling thread: a nested one is refused."""

    def __init__(self) -> None:
        self.vcpus: set[int] = set()


_in_multicall = _InMulticall()        # per calling thread, i.e. per vCPU


@hypercall("multicall")
def do_multicall(ctx: HypercallContext, call_list: int, nr_calls: int) -> int:
    nr_calls &= 0xFFFF_FFFF
    vcpu = ctx.vcpu
    active = _in_multicall.vcpus
    if id(vcpu) in active:
        return -E.EINVAL
    active.add(id(vcpu))
    try:
        if not handle_ok(ctx.domain, call_list):
            return -E.EFAULT
        table = ctx.hv.hypercalls
        for i in range(nr_calls):
            addr = call_list + i * _ENTRY.size
            try:
                op, _, *args = _ENTRY.unpack(ctx.read(addr, _ENTRY.size))
            except GuestFault:
                return -E.EFAULT
            # x86-64 hypercalls take five arguments; the sixth slot is not passed on.
            result = table.dispatch(ctx, op, args[:5] + [0]) if op < 64 else -E.ENOSYS
            try:
                ctx.write(addr + 8, _RESULT.pack(result & 0xFFFF_FFFF_FFFF_FFFF))
            except GuestFault:
                if op != X.__HYPERVISOR_iret:
                    return -E.EFAULT
            if op == X.__HYPERVISOR_iret:
                return result
        return 0
    finally:
        active.discard(id(vcpu))

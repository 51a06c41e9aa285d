"""HYPERVISOR_set_trap_table and HYPERVISOR_set_callbacks (Xen: pv/callback.c)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import errno as E
from abi.arch_x86_xen import trap_info
from abi.fast import codec
from hypercalls import hypercall
from pvhyp.domain import pv_of
from pvhyp.pv import state as pv_state
from pvhyp.pv.traps import GuestCrash

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

_TRAP_INFO = codec(trap_info)

# Xen preempts a long table with a continuation; a table that never ends
# would keep us here forever, so it is cut off (see the report's divergences).
MAX_TRAP_TABLE_ENTRIES = 1 << 16


@hypercall("set_trap_table")
def do_set_trap_table(ctx: HypercallContext, traps: int) -> int:
    pv = pv_of(ctx.vcpu)
    if traps == 0:
        pv_state.clear_trap_table(pv)
        return 0
    for i in range(MAX_TRAP_TABLE_ENTRIES):
        entry = _TRAP_INFO.parse(ctx.read(traps + i * _TRAP_INFO.size, _TRAP_INFO.size))
        if entry["address"] == 0:
            return 0
        rc = pv_state.set_trap_entry(pv, entry["vector"], entry["flags"], entry["cs"], entry["address"])
        if rc:
            return rc
    return -E.EINVAL


@hypercall("set_callbacks")
def do_set_callbacks(ctx: HypercallContext, event_address: int, failsafe_address: int,
                     syscall_address: int) -> int:
    """Register the three callbacks with no flags; a non-canonical one is ignored (always 0)."""
    pv = pv_of(ctx.vcpu)
    for callback, address in ((pv.event_callback, event_address),
                              (pv.failsafe_callback, failsafe_address),
                              (pv.syscall_callback, syscall_address)):
        if pv_state.is_canonical_address(address):
            callback.address = address
            callback.masks_events = False
    return 0


@hypercall("iret")
def do_iret(ctx: HypercallContext) -> int:
    """HYPERVISOR_iret reached through a multicall (the CPU engine takes a direct one itself,
    Xen: pv/iret.c): the frame at the guest's stack pointer is restored, the batch ends there
    and its result is the restored %rax (XSA-213)."""
    entry = ctx.vcpu.arch
    if entry is None:
        return -E.ENOSYS        # a process domain has no frame to return to
    try:
        entry.bouncer.do_iret()
    except GuestCrash as err:
        entry.crash(str(err))   # Xen: an unreadable or bad frame is domain_crash(), result 0
        return 0
    return entry.engine.read("rax")

"""The oracle: what must hold after every fuzz step.

Cheap checks run after every step (no escaped exception, a result Xen could
give); the invariant checkers of the PV MMU, event channels and grant tables,
the victim's memory and frame conservation run every `full_every` steps and
at the end (the issue allows incremental checks if a full recomputation runs
at least every 1,000 steps).
"""
from __future__ import annotations

from abi import errno as xen_errno
from abi.xen import DOMID_XEN, MMU_UPDATE_PREEMPTED
from pvhyp import event_channel, grant_table
from pvhyp.mm import checker as mm_checker

XEN_ERRNOS = frozenset(v for k, v in vars(xen_errno).items()
                       if k.isupper() and k.startswith("E") and isinstance(v, int))
# Hypercalls whose success is exactly 0 (counts go through pointers, not the result).
ZERO_ON_SUCCESS = frozenset({
    "mmu_update", "mmuext_op", "update_va_mapping", "update_va_mapping_otherdomain",
    "event_channel_op", "multicall", "set_trap_table", "stack_switch", "vm_assist",
    "set_callbacks", "set_segment_base", "fpu_taskswitch", "set_debugreg", "set_gdt",
    "update_descriptor", "set_timer_op",
})
# (name, checker(hv) -> list of problems)
_CHECKERS = (("pvhyp.mm.checker:check_invariants", mm_checker.check_invariants),
             ("pvhyp.event_channel:check_consistency", event_channel.check_consistency),
             ("pvhyp.grant_table:check_consistency", grant_table.check_consistency))


# Hypercalls whose result is a raw register value (any 64 bits), as in Xen.
RAW_VALUE = frozenset({"get_debugreg"})




def _xen_quirk(hypercall: str, result: int, args) -> bool:
    """Results Xen gives that break the general rule, each from Xen's source."""
    if hypercall in ("mmu_update", "mmuext_op") and args is not None:
        # A null handle with count == MMU_UPDATE_PREEMPTED returns (int)foreigndom:
        # the continuation that finishes dropping an old_guest_table.
        if args[0] == 0 and args[1] & 0xFFFF_FFFF == MMU_UPDATE_PREEMPTED:
            fd = args[3] & 0xFFFF_FFFF
            return result == (fd - (1 << 32) if fd & (1 << 31) else fd)
    return False


def check_result(hypercall: str, result, args=None) -> str | None:
    if isinstance(result, int) and _xen_quirk(hypercall, result, args):
        return None
    if not isinstance(result, int) or isinstance(result, bool):
        return f"{hypercall} returned a non-integer {result!r}"
    if hypercall in RAW_VALUE:
        return None if -(1 << 63) <= result < (1 << 64) else f"{hypercall} returned {result}, wider than 64 bits"
    if not -(1 << 63) <= result < (1 << 63):
        return f"{hypercall} returned {result}, outside a signed 64-bit register"
    if result < 0 and -result not in XEN_ERRNOS:
        return f"{hypercall} returned {result}, not a Xen errno"
    if result > 0 and hypercall in ZERO_ON_SUCCESS:
        return f"{hypercall} returned {result}; Xen returns 0 on success"
    return None


def available_checkers() -> list:
    return list(_CHECKERS)


def full_check(world, checkers) -> list[str]:
    problems: list[str] = []
    for spec, fn in checkers:
        try:
            problems += [f"{spec.split(':')[0]}: {p}" for p in fn(world.hv)]
        except Exception as e:    # a checker crashing on the state is itself a finding
            problems.append(f"{spec} raised {type(e).__name__}: {e}")
    if not world.privileged and world.victim_memory_digest() != world.victim_digest:
        problems.append("the victim domain's memory changed")
    frames = world.hv.frames
    if frames.owned_by(world.victim.p2m[0], world.attacker.domid):
        problems.append("a victim frame now belongs to the attacker")
    owners = set(frames.owner)
    for domid in owners:
        if domid >= 0 and domid not in world.hv.domains and domid != DOMID_XEN:
            problems.append(f"frames owned by d{domid}, which does not exist")
    return problems

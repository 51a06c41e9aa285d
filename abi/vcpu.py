"""xen/include/public/vcpu.h: HYPERVISOR_vcpu_op(cmd, vcpuid, arg).

Per-vcpu control: bring vcpus up and down, their timers, and where Xen
publishes their runstate, vcpu_info and time records in guest memory.
A vcpu may only target itself with the timer and registration ops.
"""

from construct import Padding, Struct

from abi.cdefs import XEN_GUEST_HANDLE, CUnion, Typedef, int32_t, uint32_t, uint64_t

VCPUOP_initialise = 0  # arg: vcpu_guest_context; once, before the vcpu first runs
VCPUOP_up = 1  # arg unused: start an initialised vcpu
VCPUOP_down = 2  # arg unused: stop a vcpu (it keeps its state)
VCPUOP_is_up = 3  # result: 1 if running, 0 if down
VCPUOP_get_runstate_info = 4  # arg: vcpu_runstate_info (OUT)

XEN_RUNSTATE_UPDATE = 1 << 63  # set in state_entry_time while Xen updates a guest copy

vcpu_runstate_info = Struct(
    "state" / int32_t * "OUT: RUNSTATE_*",
    Padding(4),
    "state_entry_time" / uint64_t * "OUT: system time (ns) the state was entered; bit 63 XEN_RUNSTATE_UPDATE",
    "time" / uint64_t[4] * "OUT: ns spent in each RUNSTATE_*",
)
vcpu_runstate_info.docs = "Where a vcpu's time went (steal time = runnable + offline)."

RUNSTATE_running = 0  # on a physical cpu
RUNSTATE_runnable = 1  # wanting one
RUNSTATE_blocked = 2  # waiting for an event
RUNSTATE_offline = 3  # down, or paused by the toolstack

VCPUOP_register_runstate_memory_area = 5


def _guest_pointer(target: str) -> CUnion:
    # The header writes these as a union of a handle, a raw pointer and a
    # 64-bit integer: all three are the same 8-byte guest virtual address.
    return CUnion(
        "h" / XEN_GUEST_HANDLE(target),
        "v" / Typedef(f"struct {target.removesuffix('_t')} *", uint64_t),
        "p" / uint64_t,
    )


vcpu_register_runstate_memory_area = Struct(
    "addr" / _guest_pointer("vcpu_runstate_info_t") * "IN: guest virtual address Xen keeps updated",
)
vcpu_register_runstate_memory_area.docs = (
    "VCPUOP_register_runstate_memory_area: Xen writes the vcpu's runstate "
    "there whenever it is descheduled (until the address is changed or 0)."
)

VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
vcpu_set_periodic_timer = Struct(
    "period_ns" / uint64_t * "IN: fire VIRQ_TIMER every period",
)
vcpu_set_periodic_timer.docs = "VCPUOP_set_periodic_timer: a ticking VIRQ_TIMER."

VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
_VCPU_SSHOTTMR_future = 0
VCPU_SSHOTTMR_future = 1 << _VCPU_SSHOTTMR_future  # fail with -ETIME if the time has passed

vcpu_set_singleshot_timer = Struct(
    "timeout_abs_ns" / uint64_t * "IN: absolute system time at which VIRQ_TIMER fires",
    "flags" / uint32_t * "IN: VCPU_SSHOTTMR_*",
    Padding(4),
)
vcpu_set_singleshot_timer.docs = "VCPUOP_set_singleshot_timer: one VIRQ_TIMER at a deadline."

VCPUOP_register_vcpu_info = 10
vcpu_register_vcpu_info = Struct(
    "mfn" / uint64_t * "IN: frame to hold this vcpu's vcpu_info",
    "offset" / uint32_t * "IN: its offset in the frame (must not cross the page end)",
    "rsvd" / uint32_t * "IN: 0",
)
vcpu_register_vcpu_info.docs = (
    "VCPUOP_register_vcpu_info: move the vcpu's vcpu_info out of shared_info "
    "(needed beyond XEN_LEGACY_MAX_VCPUS vcpus); Xen copies the current state there."
)

VCPUOP_send_nmi = 11  # arg unused: raise an NMI on the vcpu
VCPUOP_get_physid = 12
vcpu_get_physid = Struct(
    "phys_id" / uint64_t * "OUT: x86 APIC id in bits 0-31, ACPI id in bits 32-63",
)
vcpu_get_physid.docs = "VCPUOP_get_physid: the physical cpu's ids (dom0, pinned vcpus)."


def xen_vcpu_physid_to_x86_apicid(physid: int) -> int:
    return physid & 0xFFFFFFFF


def xen_vcpu_physid_to_x86_acpiid(physid: int) -> int:
    return (physid >> 32) & 0xFFFFFFFF


VCPUOP_register_vcpu_time_memory_area = 13
vcpu_register_time_memory_area = Struct(
    "addr" / _guest_pointer("vcpu_time_info_t") * "IN: guest virtual address for a vcpu_time_info copy",
)
vcpu_register_time_memory_area.docs = (
    "VCPUOP_register_vcpu_time_memory_area: Xen also writes the vcpu's time "
    "record there (so user space can map it)."
)

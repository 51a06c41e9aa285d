"""xen/include/public/sched.h: HYPERVISOR_sched_op(cmd, arg).

How a vcpu gives up the CPU: yield, block until an event, poll a set of
ports, or shut the whole domain down with a reason the toolstack acts on.
"""

from construct import Padding, Struct

from abi import xen
from abi.cdefs import XEN_GUEST_HANDLE, int32_t, uint32_t, uint64_t, unsigned_int

SCHEDOP_yield = 0  # arg unused: let other vcpus run
SCHEDOP_block = 1  # arg unused: sleep until an event is pending (clears the upcall mask)
SCHEDOP_shutdown = 2  # arg: sched_shutdown
SCHEDOP_poll = 3  # arg: sched_poll
SCHEDOP_remote_shutdown = 4  # arg: sched_remote_shutdown (privileged)
SCHEDOP_shutdown_code = 5  # arg: sched_shutdown; record the reason, shut down later
SCHEDOP_watchdog = 6  # arg: sched_watchdog
SCHEDOP_pin_override = 7  # arg: sched_pin_override (dom0)

sched_shutdown = Struct(
    "reason" / unsigned_int * "IN: SHUTDOWN_*",
)
sched_shutdown.docs = "SCHEDOP_shutdown: stop this domain; the toolstack sees the reason."

sched_poll = Struct(
    "ports" / XEN_GUEST_HANDLE("evtchn_port_t") * "IN: array of local ports",
    "nr_ports" / unsigned_int * "IN",
    Padding(4),
    "timeout" / uint64_t * "IN: absolute system time (ns) to give up at; 0 = never",
)
sched_poll.docs = "SCHEDOP_poll: block until one of the ports is pending or the timeout passes."

sched_remote_shutdown = Struct(
    "domain_id" / xen.domid_t * "IN: domain to shut down",
    Padding(2),
    "reason" / unsigned_int * "IN: SHUTDOWN_*",
)
sched_remote_shutdown.docs = "SCHEDOP_remote_shutdown: shut another domain down (privileged)."

sched_watchdog = Struct(
    "id" / uint32_t * "IN: 0 to create a watchdog (returns its id); else the one to kick/kill",
    "timeout" / uint32_t * "IN: seconds until the domain is shut down; 0 destroys the watchdog",
)
sched_watchdog.docs = "SCHEDOP_watchdog: a timer the guest must keep kicking."

sched_pin_override = Struct(
    "pcpu" / int32_t * "IN: physical cpu to pin to; -1 ends the override",
)
sched_pin_override.docs = "SCHEDOP_pin_override: temporarily pin the vcpu (dom0, for firmware calls)."

SHUTDOWN_poweroff = 0  # the domain wants to be destroyed
SHUTDOWN_reboot = 1  # ... destroyed and restarted
SHUTDOWN_suspend = 2  # ... saved (its state is consistent for save/migrate)
SHUTDOWN_crash = 3  # it crashed
SHUTDOWN_watchdog = 4  # its watchdog expired
SHUTDOWN_soft_reset = 5  # reset its state and restart it in place
SHUTDOWN_MAX = 5

# Name of every reason, as xl prints it ("poweroff", "soft_reset").
SHUTDOWN_NAMES: dict[int, str] = {
    value: name.removeprefix("SHUTDOWN_") for name, value in list(globals().items())
    if name.startswith("SHUTDOWN_") and name != "SHUTDOWN_MAX" and isinstance(value, int)
}

"""xen/include/public/callback.h: HYPERVISOR_callback_op(cmd, arg).

Where Xen enters the guest kernel for asynchronous events: event upcalls,
the failsafe path (when Xen cannot restore the guest's segments on return),
SYSCALL from guest user space, and NMIs.
"""

from construct import Padding, Struct

from abi import xen_x86_64
from abi.cdefs import uint16_t

CALLBACKTYPE_event = 0  # event-channel upcall
CALLBACKTYPE_failsafe = 1  # segment reload failed on return to the guest
CALLBACKTYPE_syscall = 2  # 64-bit SYSCALL from guest user mode
CALLBACKTYPE_sysenter_deprecated = 3
CALLBACKTYPE_nmi = 4
CALLBACKTYPE_sysenter = 5  # 32-bit SYSENTER (compat user space)
CALLBACKTYPE_syscall32 = 7  # 32-bit SYSCALL (compat user space)

_CALLBACKF_mask_events = 0
# Mask event upcalls on entry (failsafe/syscall callbacks; the event and NMI
# callbacks always enter with upcalls masked).
CALLBACKF_mask_events = 1 << _CALLBACKF_mask_events

CALLBACKOP_register = 0
callback_register = Struct(
    "type" / uint16_t * "IN: CALLBACKTYPE_*",
    "flags" / uint16_t * "IN: CALLBACKF_*",
    Padding(4),
    "address" / xen_x86_64.xen_callback_t * "IN: entry point (guest virtual address)",
)
callback_register.docs = "CALLBACKOP_register: set one entry point."

CALLBACKOP_unregister = 1
callback_unregister = Struct(
    "type" / uint16_t * "IN: CALLBACKTYPE_*",
    "_unused" / uint16_t,
)
callback_unregister.docs = "CALLBACKOP_unregister: clear one; on x86 only the NMI callback can be (-EINVAL otherwise)."

"""xen/include/public/event_channel.h: HYPERVISOR_event_channel_op(cmd, arg).

An event channel is a port number in a domain; each port carries one
pending bit and one mask bit (2-level ABI: shared_info.evtchn_pending /
evtchn_mask; FIFO ABI: per-port event words).  A port is bound to exactly one
source: another domain's port, a VIRQ, a physical IRQ, or an IPI.

Every op takes a pointer to its struct below; fields are IN unless noted OUT.
"""

from construct import Padding, Struct

from abi import xen
from abi.cdefs import CUnion, Typedef, uint8_t, uint32_t, uint64_t

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13

evtchn_port_t = Typedef("evtchn_port_t", uint32_t)
domid_t = xen.domid_t

evtchn_alloc_unbound = Struct(
    "dom" / domid_t * "IN: domain to allocate the port in (DOMID_SELF, or any if privileged)",
    "remote_dom" / domid_t * "IN: the only domain allowed to bind to it",
    "port" / evtchn_port_t * "OUT: the new port, state unbound",
)
evtchn_alloc_unbound.docs = (
    "EVTCHNOP_alloc_unbound: make a port in <dom> that <remote_dom> may later "
    "bind to with EVTCHNOP_bind_interdomain (how backends and xenstore connect)."
)

evtchn_bind_interdomain = Struct(
    "remote_dom" / domid_t * "IN",
    Padding(2),
    "remote_port" / evtchn_port_t * "IN: an unbound port of remote_dom that allows us",
    "local_port" / evtchn_port_t * "OUT: our new port, connected to it",
)
evtchn_bind_interdomain.docs = "EVTCHNOP_bind_interdomain: connect a new local port to a remote unbound port."

evtchn_bind_virq = Struct(
    "virq" / uint32_t * "IN: VIRQ_*",
    "vcpu" / uint32_t * "IN: vcpu to notify (0 for global VIRQs)",
    "port" / evtchn_port_t * "OUT",
)
evtchn_bind_virq.docs = "EVTCHNOP_bind_virq: a new port signalled by a virtual interrupt; EEXIST if already bound."

BIND_PIRQ__WILL_SHARE = 1

evtchn_bind_pirq = Struct(
    "pirq" / uint32_t * "IN: physical IRQ",
    "flags" / uint32_t * "IN: BIND_PIRQ__WILL_SHARE",
    "port" / evtchn_port_t * "OUT",
)
evtchn_bind_pirq.docs = "EVTCHNOP_bind_pirq: a new port signalled by a physical IRQ the domain may access."

evtchn_bind_ipi = Struct(
    "vcpu" / uint32_t * "IN: vcpu to notify",
    "port" / evtchn_port_t * "OUT",
)
evtchn_bind_ipi.docs = "EVTCHNOP_bind_ipi: a new port for signalling one of our own vcpus."

evtchn_close = Struct(
    "port" / evtchn_port_t * "IN",
)
evtchn_close.docs = "EVTCHNOP_close: unbind a port; an interdomain peer's port becomes unbound."

evtchn_send = Struct(
    "port" / evtchn_port_t * "IN: a local port; its peer (or we, for IPIs) is notified",
)
evtchn_send.docs = "EVTCHNOP_send: set the pending bit at the other end of a port."

EVTCHNSTAT_closed = 0  # free
EVTCHNSTAT_unbound = 1  # allocated, waiting for a remote domain
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5

evtchn_status = Struct(
    "dom" / domid_t * "IN: DOMID_SELF, or another domain if privileged",
    Padding(2),
    "port" / evtchn_port_t * "IN",
    "status" / uint32_t * "OUT: EVTCHNSTAT_*",
    "vcpu" / uint32_t * "OUT: vcpu the port notifies",
    "u" / CUnion(
        "unbound" / Struct("dom" / domid_t * "who may bind"),
        "interdomain" / Struct(
            "dom" / domid_t,
            Padding(2),
            "port" / evtchn_port_t,
        ),
        "pirq" / uint32_t,
        "virq" / uint32_t,
    ) * "OUT: detail for the status",
)
evtchn_status.docs = "EVTCHNOP_status: what a port is bound to."

evtchn_bind_vcpu = Struct(
    "port" / evtchn_port_t * "IN",
    "vcpu" / uint32_t * "IN",
)
evtchn_bind_vcpu.docs = "EVTCHNOP_bind_vcpu: deliver a port's notifications to another vcpu (not for per-vcpu VIRQs, IPIs)."

evtchn_unmask = Struct(
    "port" / evtchn_port_t * "IN",
)
evtchn_unmask.docs = "EVTCHNOP_unmask: clear the mask bit and redeliver if the port is pending."

evtchn_reset = Struct(
    "dom" / domid_t * "IN: DOMID_SELF, or another domain if privileged",
)
evtchn_reset.docs = "EVTCHNOP_reset: close all of a domain's ports (and return to the 2-level ABI)."

evtchn_init_control = Struct(
    "control_gfn" / uint64_t * "IN: frame holding this vcpu's FIFO control block",
    "offset" / uint32_t * "IN: offset of the control block in that frame",
    "vcpu" / uint32_t * "IN",
    "link_bits" / uint8_t * "OUT: EVTCHN_FIFO_LINK_BITS",
    "_pad" / uint8_t[7],
)
evtchn_init_control.docs = "EVTCHNOP_init_control: switch to the FIFO event ABI, registering a vcpu's control block."

evtchn_expand_array = Struct(
    "array_gfn" / uint64_t * "IN: frame to add to the FIFO event array",
)
evtchn_expand_array.docs = "EVTCHNOP_expand_array: add a page of event words (FIFO ABI)."

evtchn_set_priority = Struct(
    "port" / evtchn_port_t * "IN",
    "priority" / uint32_t * "IN: EVTCHN_FIFO_PRIORITY_MAX (0) .. _MIN (15)",
)
evtchn_set_priority.docs = "EVTCHNOP_set_priority: a port's FIFO queue."

evtchn_op = Struct(
    "cmd" / uint32_t * "IN: EVTCHNOP_*",
    "u" / CUnion(
        "alloc_unbound" / evtchn_alloc_unbound,
        "bind_interdomain" / evtchn_bind_interdomain,
        "bind_virq" / evtchn_bind_virq,
        "bind_pirq" / evtchn_bind_pirq,
        "bind_ipi" / evtchn_bind_ipi,
        "close" / evtchn_close,
        "send" / evtchn_send,
        "status" / evtchn_status,
        "bind_vcpu" / evtchn_bind_vcpu,
        "unmask" / evtchn_unmask,
    ),
)
evtchn_op.docs = "Argument of the pre-3.2 HYPERVISOR_event_channel_op_compat(op): cmd and its struct in one."

# 2-level ABI: a bit per port in shared_info, 64 words of 64 bits on x86-64.
EVTCHN_2L_NR_CHANNELS = 8 * 8 * 64

# FIFO ABI.
EVTCHN_FIFO_PRIORITY_MAX = 0
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1

event_word_t = Typedef("event_word_t", uint32_t)
# Bits of an event word; the low LINK_BITS link to the next port in the queue.
EVTCHN_FIFO_PENDING = 31
EVTCHN_FIFO_MASKED = 30
EVTCHN_FIFO_LINKED = 29
EVTCHN_FIFO_BUSY = 28
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS

evtchn_fifo_control_block = Struct(
    "ready" / uint32_t * "bit per queue with events; Xen sets, guest clears",
    "_rsvd" / uint32_t,
    "head" / uint32_t[EVTCHN_FIFO_MAX_QUEUES] * "first port of each priority queue",
)
evtchn_fifo_control_block.docs = "Per-vcpu FIFO control block (in the page given to EVTCHNOP_init_control)."

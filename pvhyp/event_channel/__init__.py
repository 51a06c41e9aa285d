"""Event channels: Xen's common/event_channel.c, over the 2-level ABI (two_level.py, event_2l.c).

A port is a small state machine per domain (`Evtchn`); notifying it sets
its bit in shared_info.evtchn_pending, and unless the port is masked, its
word's bit in the target vCPU's evtchn_pending_sel and then
evtchn_upcall_pending. Those bitmaps are guest memory that the guest
updates with locked instructions, so every write to them is handed to the
target vCPU with `vcpu.post` (see VCPU.post) and followed by `vcpu.kick()`.

Ops take the calling domain (`current`) first and a dict in the shape of
the abi struct, fill its OUT fields, and return 0 or -errno, like Xen's
evtchn_* functions, so hypercalls/event_channel.py stays a thin copy
in / copy out. One lock for a hypervisor's port state (`hv.evtchn_lock`,
set by attach): a send touches two domains and state changes are short.
Who may act on another domain's ports is the policy's (`hv.xsm`).
"""
from __future__ import annotations

import threading

from abi import errno as E
from abi import xen as X
from abi.event_channel import (
    EVTCHN_2L_NR_CHANNELS,
    EVTCHNSTAT_closed,
    EVTCHNSTAT_interdomain,
    EVTCHNSTAT_ipi,
    EVTCHNSTAT_pirq,
    EVTCHNSTAT_unbound,
    EVTCHNSTAT_virq,
)
from pvhyp.event_channel import two_level
from pvhyp.event_channel.two_level import (  # noqa: F401 (the 2-level ABI's layout, for callers)
    OFF_EVTCHN_MASK,
    OFF_EVTCHN_PENDING,
    OFF_PENDING_SEL,
    OFF_UPCALL_PENDING,
    VCPU_INFO_SIZE,
    evtchn_port_is_pending,
    vcpu_info_maddr,
)

# Port states (Xen's ECS_*).
ECS_FREE, ECS_RESERVED, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ, ECS_VIRQ, ECS_IPI = range(7)
_ECS_TO_STAT = {ECS_FREE: EVTCHNSTAT_closed, ECS_RESERVED: EVTCHNSTAT_closed,
                ECS_UNBOUND: EVTCHNSTAT_unbound, ECS_INTERDOMAIN: EVTCHNSTAT_interdomain,
                ECS_PIRQ: EVTCHNSTAT_pirq, ECS_VIRQ: EVTCHNSTAT_virq, ECS_IPI: EVTCHNSTAT_ipi}

# Xen allocates ports a page of `struct evtchn` (64 bytes each) at a time;
# a port beyond the allocated buckets is "not valid" (EINVAL), one inside
# but unused is "closed". Keeping the same bucket size keeps those answers.
EVTCHNS_PER_BUCKET = 64
INT_MAX = 0x7FFF_FFFF
# libxl's default max_event_channels for a guest; the control domain is unlimited.
DEFAULT_DOMU_MAX_EVTCHN_PORT = 1023
HARDWARE_DOMID = 0     # Xen's hardware_domid: dom0 gets the global VIRQs nobody else bound

# Physical IRQs: pvhyp has no devices, so no domain may access any pIRQ.
# nr_pirqs follows Xen's formula with 16 legacy GSIs (no IO-APIC):
# nr_static_irqs + extra_domU_irqs (32) or + extra_hwdom_irqs (we take 256).
NR_STATIC_IRQS = 16
NR_PIRQS_DOMU = NR_STATIC_IRQS + 32
NR_PIRQS_HWDOM = NR_STATIC_IRQS + 256


_GLOBAL_EXCEPTIONS = (X.VIRQ_TIMER, X.VIRQ_DEBUG, X.VIRQ_XENOPROF, X.VIRQ_XENPMU)


def virq_is_global(virq: int) -> bool:
    # x86: arch VIRQs (VIRQ_ARCH_0.. e.g. MCA) are global too.
    return virq not in _GLOBAL_EXCEPTIONS


class Evtchn:
    __slots__ = ("port", "state", "notify_vcpu_id", "remote_domid", "remote_dom",
                 "remote_port", "virq", "pirq", "xen_consumer")

    def __init__(self, port: int):
        self.port = port
        self.free()

    def free(self) -> None:
        self.state = ECS_FREE
        self.notify_vcpu_id = 0
        self.remote_domid = 0       # ECS_UNBOUND: who may bind
        self.remote_dom = None      # ECS_INTERDOMAIN: the peer Domain and its port
        self.remote_port = 0
        self.virq = 0
        self.pirq = 0
        self.xen_consumer = None    # a hypervisor-side consumer: the guest may not close/send


class DomainEvtchn:
    """A domain's ports (domain.evtchn)."""

    def __init__(self, domain, max_evtchn_port: int):
        self.domain = domain
        self.chans: list[Evtchn] = []
        self.max_evtchn_port = max_evtchn_port
        self.nr_pirqs = NR_PIRQS_HWDOM if domain.is_privileged else NR_PIRQS_DOMU
        self.resetting = 0          # Xen's next_evtchn: a reset in progress
        self._grow()
        self.chans[0].state = ECS_RESERVED

    @property
    def valid_evtchns(self) -> int:
        return len(self.chans)

    def _grow(self) -> None:
        base = len(self.chans)
        self.chans.extend(Evtchn(base + i) for i in range(EVTCHNS_PER_BUCKET))

    def port_is_valid(self, port: int) -> bool:
        return 0 <= port < len(self.chans)

    def get(self, port: int) -> Evtchn | None:
        return self.chans[port] if 0 <= port < len(self.chans) else None

    def max_evtchns(self) -> int:
        return EVTCHN_2L_NR_CHANNELS

    def get_free_port(self) -> int:
        """Xen's get_free_port: the lowest free port, growing by a bucket; -errno if none."""
        if self.domain.is_dying:
            return -E.EINVAL
        limit = min(self.max_evtchn_port, self.max_evtchns() - 1)
        port = 0
        while port <= limit:
            if port >= len(self.chans):
                self._grow()
            if self.chans[port].state == ECS_FREE:
                return port
            port += 1
        return -E.ENOSPC


# --- lock, attach, lookups ------------------------------------------------------------

def attach(hv) -> None:
    hv.evtchn_lock = threading.RLock()      # this hypervisor's port state (see the module docstring)
    hv.domain_create_hooks.append(evtchn_init)
    hv.domain_create_hooks.append(_report_domain_exceptions)
    hv.domain_destroy_hooks.append(evtchn_destroy)


def evtchn_init(d) -> None:
    """Ports for a new domain, limited by XEN_DOMCTL_createdomain's max_evtchn_port when given."""
    config = d.config
    if "max_evtchn_port" in config:
        max_port = min(config["max_evtchn_port"] & 0xFFFF_FFFF, INT_MAX)
    else:
        max_port = INT_MAX if d.is_privileged else DEFAULT_DOMU_MAX_EVTCHN_PORT
    d.evtchn = DomainEvtchn(d, max_port)


def _report_domain_exceptions(d) -> None:
    """Xen raises VIRQ_DOM_EXC in the hardware domain when a domain shuts down (domain_shutdown)
    and when it is destroyed (complete_domain_destroy), so the toolstack acts on either at once
    instead of at its next poll: it is what `xl shutdown -w` then `xl list` rely on."""
    if d.domid == HARDWARE_DOMID:
        return
    d.on_shutdown.append(lambda d, _reason: send_guest_global_virq(d.hv.get_domain(HARDWARE_DOMID),
                                                                   X.VIRQ_DOM_EXC))


def evtchn_destroy(d) -> None:
    """Close every port (peers' interdomain ports fall back to unbound)."""
    with d.hv.evtchn_lock:
        if d.evtchn is None:
            return
        for port in range(1, d.evtchn.valid_evtchns):
            evtchn_close(d, port, guest=False)


def set_max_evtchn_port(d, max_port: int) -> None:
    """The toolstack's max_evtchn_port (XEN_DOMCTL_createdomain's config)."""
    with d.hv.evtchn_lock:
        d.evtchn.max_evtchn_port = min(max_port, INT_MAX)


def domain_vcpu(d, vcpu_id: int):
    if 0 <= vcpu_id < len(d.vcpus):
        return d.vcpus[vcpu_id]
    return None


def evtchn_set_pending(v, port: int) -> None:
    """Mark `port` of v's domain pending and notify v (event_2l's set_pending)."""
    d = v.domain
    hv = d.hv
    if hv.trace.enabled:
        hv.trace.emit("event", d.domid, v.vcpu_id, op="set_pending", port=port)
    v.post(lambda: two_level.set_pending_bits(v, port))
    v.kick()
    evtchn_check_pollers(d, port)


def evtchn_check_pollers(d, port: int) -> None:
    """Wake vCPUs blocked in SCHEDOP_poll on this port (vcpu.poll_evtchn: None = not polling, 0 = any)."""
    for v in d.vcpus:
        want = v.poll_evtchn
        if want is not None and (want <= 0 or want == port):
            v.poll_evtchn = None
            v.kick()


def _notify(d, vcpu_id: int, port: int) -> None:
    """Deliver a notification decided under the lock (called after releasing it: a kick
    may wait on the CPU engine, which must never wait on the event lock's holder)."""
    v = domain_vcpu(d, vcpu_id)
    if v is not None:
        evtchn_set_pending(v, port)


def _clear_pending(d, port: int) -> None:
    if d.vcpus:
        d.vcpus[0].post(lambda: two_level.clear_pending_bit(d, port))
    else:
        two_level.clear_pending_bit(d, port)


def _free(d, chn: Evtchn) -> None:
    _clear_pending(d, chn.port)
    chn.free()


# --- the ops --------------------------------------------------------------------------

def evtchn_alloc_unbound(current, alloc: dict) -> int:
    d = current.hv.domain_by_any_id(current, alloc["dom"])
    if d is None:
        return -E.ESRCH
    with current.hv.evtchn_lock:
        port = d.evtchn.get_free_port()
        if port < 0:
            return port
        rc = current.hv.xsm.evtchn_unbound(current, d)
        if rc:
            return rc
        chn = d.evtchn.chans[port]
        chn.state = ECS_UNBOUND
        remote = alloc["remote_dom"]
        chn.remote_domid = current.domid if remote == X.DOMID_SELF else remote
        alloc["port"] = port
    return 0


def evtchn_bind_interdomain(current, bind: dict) -> int:
    rd = current.hv.domain_by_any_id(current, bind["remote_dom"])
    if rd is None:
        return -E.ESRCH
    with current.hv.evtchn_lock:
        lport = current.evtchn.get_free_port()
        if lport < 0:
            return lport
        rchn = rd.evtchn.get(bind["remote_port"])
        if rchn is None or rchn.state != ECS_UNBOUND or rchn.remote_domid != current.domid:
            return -E.EINVAL
        lchn = current.evtchn.chans[lport]
        lchn.state = ECS_INTERDOMAIN
        lchn.remote_dom, lchn.remote_port = rd, rchn.port
        rchn.state = ECS_INTERDOMAIN
        rchn.remote_dom, rchn.remote_port = current, lport
        bind["local_port"] = lport
        notify_vcpu = lchn.notify_vcpu_id
    # Notifications sent to the unbound remote port were dropped: be
    # conservative, as Xen is, and mark the new local port pending.
    _notify(current, notify_vcpu, lport)
    return 0


def evtchn_bind_virq(current, bind: dict) -> int:
    virq, vcpu = bind["virq"], bind["vcpu"]
    if not 0 <= virq < X.NR_VIRQS:
        return -E.EINVAL
    if virq_is_global(virq) and vcpu != 0:
        return -E.EINVAL
    v = domain_vcpu(current, vcpu)
    if v is None:
        return -E.ENOENT
    with current.hv.evtchn_lock:
        if v.virq_to_evtchn.get(virq):
            return -E.EEXIST
        port = current.evtchn.get_free_port()
        if port < 0:
            return port
        chn = current.evtchn.chans[port]
        chn.state = ECS_VIRQ
        chn.notify_vcpu_id = vcpu
        chn.virq = virq
        v.virq_to_evtchn[virq] = port
        bind["port"] = port
    return 0


def evtchn_bind_ipi(current, bind: dict) -> int:
    vcpu = bind["vcpu"]
    if domain_vcpu(current, vcpu) is None:
        return -E.ENOENT
    with current.hv.evtchn_lock:
        port = current.evtchn.get_free_port()
        if port < 0:
            return port
        chn = current.evtchn.chans[port]
        chn.state = ECS_IPI
        chn.notify_vcpu_id = vcpu
        bind["port"] = port
    return 0


def evtchn_bind_pirq(current, bind: dict) -> int:
    if bind["pirq"] >= current.evtchn.nr_pirqs:
        return -E.EINVAL
    # pirq_access_permitted: no pIRQ is ever mapped to a domain here.
    return -E.EPERM


def evtchn_close(d1, port1: int, guest: bool = True) -> int:
    with d1.hv.evtchn_lock:
        chn1 = d1.evtchn.get(port1)
        if chn1 is None:
            return -E.EINVAL
        if chn1.xen_consumer is not None and guest:
            return -E.EINVAL
        state = chn1.state
        if state in (ECS_FREE, ECS_RESERVED):
            return -E.EINVAL
        if state == ECS_VIRQ:
            for v in d1.vcpus:
                if v.virq_to_evtchn.get(chn1.virq) == port1:
                    del v.virq_to_evtchn[chn1.virq]
        elif state == ECS_INTERDOMAIN:
            d2 = chn1.remote_dom
            chn2 = d2.evtchn.get(chn1.remote_port)
            if chn2 is None or chn2.state != ECS_INTERDOMAIN or chn2.remote_dom is not d1:
                raise AssertionError(f"d{d1.domid} port {port1}: peer link broken")
            _free(d1, chn1)
            chn2.state = ECS_UNBOUND
            chn2.remote_dom = None
            chn2.remote_port = 0
            chn2.remote_domid = d1.domid
            return 0
        _free(d1, chn1)
    return 0


def evtchn_send(ld, lport: int, vcpu_id: int = 0) -> int:
    """EVTCHNOP_send from `ld` (its vCPU `vcpu_id`, for the trace): notify the other end of an
    interdomain port, or our own vCPU for an IPI."""
    with ld.hv.evtchn_lock:
        lchn = ld.evtchn.get(lport)
        if lchn is None:
            return -E.EINVAL
        if lchn.xen_consumer is not None:
            return -E.EINVAL
        if ld.hv.trace.enabled:         # to_dom/to_port: the timeline draws the kick to its receiver
            peer = ((lchn.remote_dom.domid, lchn.remote_port) if lchn.state == ECS_INTERDOMAIN
                    else (ld.domid, lport))
            ld.hv.trace.emit("event", ld.domid, vcpu_id, op="send", port=lport, state=lchn.state,
                             to_dom=peer[0], to_port=peer[1])
        consumer = None
        if lchn.state == ECS_INTERDOMAIN:
            rd, rport = lchn.remote_dom, lchn.remote_port
            rchn = rd.evtchn.chans[rport]
            target = (rd, rchn.notify_vcpu_id, rport)
            consumer = rchn.xen_consumer
        elif lchn.state == ECS_IPI:
            target = (ld, lchn.notify_vcpu_id, lport)
        elif lchn.state == ECS_UNBOUND:
            return 0            # nobody bound yet: dropped silently
        else:
            return -E.EINVAL
    d, vcpu_id, port = target
    if consumer is not None:
        consumer(domain_vcpu(d, vcpu_id), port)     # as Xen's xen_notification_fn
    else:
        _notify(d, vcpu_id, port)
    return 0


def evtchn_status(current, status: dict) -> int:
    d = current.hv.domain_by_any_id(current, status["dom"])
    if d is None:
        return -E.ESRCH
    with current.hv.evtchn_lock:
        chn = d.evtchn.get(status["port"])
        if chn is None:
            return -E.EINVAL
        rc = current.hv.xsm.evtchn_status(current, d)
        if rc:
            return rc
        status["status"] = _ECS_TO_STAT[chn.state]
        u = {}
        if chn.state == ECS_UNBOUND:
            u = {"unbound": {"dom": chn.remote_domid}}
        elif chn.state == ECS_INTERDOMAIN:
            u = {"interdomain": {"dom": chn.remote_dom.domid, "port": chn.remote_port}}
        elif chn.state == ECS_PIRQ:
            u = {"pirq": chn.pirq}
        elif chn.state == ECS_VIRQ:
            u = {"virq": chn.virq}
        status["u"] = u
        status["vcpu"] = chn.notify_vcpu_id
    return 0


def evtchn_bind_vcpu(current, port: int, vcpu_id: int) -> int:
    v = domain_vcpu(current, vcpu_id)
    if v is None:
        return -E.ENOENT
    with current.hv.evtchn_lock:
        chn = current.evtchn.get(port)
        if chn is None:
            return -E.EINVAL
        if chn.xen_consumer is not None:
            return -E.EINVAL
        if chn.state == ECS_VIRQ:
            if not virq_is_global(chn.virq):
                return -E.EINVAL
            chn.notify_vcpu_id = vcpu_id
        elif chn.state in (ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ):
            chn.notify_vcpu_id = vcpu_id
        else:
            return -E.EINVAL
    return 0


def evtchn_unmask(current, port: int) -> int:
    with current.hv.evtchn_lock:
        chn = current.evtchn.get(port)
        if chn is None:
            return -E.EINVAL
        v = domain_vcpu(current, chn.notify_vcpu_id)
    v.post(lambda: two_level.unmask_bits(v, port))
    v.kick()
    return 0


def evtchn_reset(current, d) -> int:
    """Close all of d's ports (the caller has asked the policy's evtchn_reset)."""
    if d is not current and not d.pause_count:
        return -E.EINVAL
    with d.hv.evtchn_lock:
        if d.evtchn.resetting:
            return -E.EBUSY
        d.evtchn.resetting = 1
        try:
            for port in range(1, d.evtchn.valid_evtchns):
                evtchn_close(d, port, guest=True)
        finally:
            d.evtchn.resetting = 0
    return 0


# --- mechanisms for other subsystems --------------------------------------------------

def send_guest_vcpu_virq(v, virq: int) -> None:
    """A per-vCPU VIRQ (timer, debug) fired on v."""
    with v.domain.hv.evtchn_lock:
        port = v.virq_to_evtchn.get(virq, 0)
        if not port or v.domain.evtchn is None:
            return
    evtchn_set_pending(v, port)


def send_guest_global_virq(d, virq: int) -> None:
    """A global VIRQ (console, dom_exc): bound on vCPU 0, delivered to the port's notify vCPU."""
    if d is None or not d.vcpus:
        return
    with d.hv.evtchn_lock:
        port = d.vcpus[0].virq_to_evtchn.get(virq, 0)
        if not port or d.evtchn is None:
            return
        vcpu_id = d.evtchn.chans[port].notify_vcpu_id
    _notify(d, vcpu_id, port)


def alloc_unbound_xen_event_channel(ld, lvcpu: int, remote_domid: int, notification_fn) -> int:
    """A port whose notifications go to a hypervisor-side consumer; returns the port or -errno."""
    with ld.hv.evtchn_lock:
        port = ld.evtchn.get_free_port()
        if port < 0:
            return port
        chn = ld.evtchn.chans[port]
        chn.state = ECS_UNBOUND
        chn.xen_consumer = notification_fn
        chn.notify_vcpu_id = lvcpu
        chn.remote_domid = remote_domid
        return port


def notify_via_xen_event_channel(ld, lport: int) -> None:
    """The hypervisor-side consumer signals its peer."""
    with ld.hv.evtchn_lock:
        lchn = ld.evtchn.get(lport)
        if lchn is None or lchn.state != ECS_INTERDOMAIN:
            return
        rd, rport = lchn.remote_dom, lchn.remote_port
        vcpu_id = rd.evtchn.chans[rport].notify_vcpu_id
    _notify(rd, vcpu_id, rport)


# --- consistency (the fuzzer's oracle) -----------------------------------------------

def check_consistency(hv) -> list[str]:
    """Every port's state agrees with its peer and VIRQ table; [] when all is well."""
    problems: list[str] = []
    with hv.evtchn_lock:
        for d in list(hv.domains.values()):
            ev = d.evtchn
            if ev is None:
                continue
            if ev.valid_evtchns % EVTCHNS_PER_BUCKET or ev.valid_evtchns > EVTCHN_2L_NR_CHANNELS:
                problems.append(f"d{d.domid}: valid_evtchns {ev.valid_evtchns}")
            if ev.chans[0].state != ECS_RESERVED:
                problems.append(f"d{d.domid}: port 0 not reserved")
            for chn in ev.chans:
                where = f"d{d.domid} port {chn.port}"
                if chn.port > ev.max_evtchn_port and chn.state not in (ECS_FREE, ECS_RESERVED):
                    problems.append(f"{where}: in use beyond max_evtchn_port")
                if chn.state not in (ECS_FREE, ECS_RESERVED) and not 0 <= chn.notify_vcpu_id < len(d.vcpus):
                    problems.append(f"{where}: notify vcpu {chn.notify_vcpu_id} out of range")
                if chn.state == ECS_INTERDOMAIN:
                    rd = chn.remote_dom
                    if rd is None or hv.domains.get(rd.domid) is not rd:
                        problems.append(f"{where}: peer domain gone")
                        continue
                    peer = rd.evtchn.get(chn.remote_port)
                    if peer is None or peer.state != ECS_INTERDOMAIN or peer.remote_dom is not d \
                            or peer.remote_port != chn.port:
                        problems.append(f"{where}: peer d{rd.domid} port {chn.remote_port} does not point back")
                elif chn.state == ECS_VIRQ:
                    v = domain_vcpu(d, chn.notify_vcpu_id if not virq_is_global(chn.virq) else 0)
                    if v is None or v.virq_to_evtchn.get(chn.virq) != chn.port:
                        problems.append(f"{where}: virq {chn.virq} not in the vcpu's table")
            for v in d.vcpus:
                for virq, port in v.virq_to_evtchn.items():
                    chn = ev.get(port)
                    if chn is None or chn.state != ECS_VIRQ or chn.virq != virq:
                        problems.append(f"d{d.domid}v{v.vcpu_id}: virq {virq} -> port {port} not a VIRQ port")
    return problems

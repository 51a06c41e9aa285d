"""Domains and vCPUs: the objects every subsystem hangs its state on.

Each subsystem keeps its own per-domain / per-vCPU state in one attribute
(`domain.mm`, `domain.evtchn`, `domain.grant_table`, `vcpu.arch`, ...), set
up by that subsystem, so that this file stays the common vocabulary and no
subsystem reaches into another's fields. Every slot is declared here with
its type and its owner; a slot is None until its owner sets it (the
domain-create hooks, or the CPU engine for `vcpu.arch`), and nothing else
assigns it. None is a state others can see: a new domain is in hv.domains
before the create hooks have run, and other threads (timers, teardown of
another domain) walk hv.domains.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, TypeVar

from pvhyp.hypercall_table import NR_HYPERCALLS

if TYPE_CHECKING:
    from pvhyp.console import DomainConsole
    from pvhyp.event_channel import DomainEvtchn
    from pvhyp.grant_table.table import GrantTable
    from pvhyp.hypervisor import Hypervisor
    from pvhyp.mm.pagetype import DomainMM
    from pvhyp.pv.entry import PvEntry
    from pvhyp.pv.state import PvState
    from pvhyp.sched import SchedUnit
    from pvhyp.time import VcpuTimers

INVALID_MFN = 0xFFFF_FFFF_FFFF_FFFF


class SlotUnset(RuntimeError):
    """A Domain/VCPU slot read before its owner set it: a hypervisor bug, not a guest error."""


# Typed accessors for the code that relies on a slot being set (a hypercall on a
# running vCPU, the engine's loop, a timer armed after the create hooks ran): they
# narrow `X | None` to `X` and say which slot was missing. Code that can legitimately
# meet None (teardown, threads walking hv.domains) tests the slot itself.
_Slot = TypeVar("_Slot")


def _set_up(value: _Slot | None, owner: VCPU | Domain, slot: str) -> _Slot:
    if value is None:      # the message is made only here: the accessors sit on hot paths
        where = (f"d{owner.domain.domid}v{owner.vcpu_id}" if isinstance(owner, VCPU)
                 else f"d{owner.domid}")
        raise SlotUnset(f"{where}: {slot} is not set up")
    return value


def pv_of(vcpu: VCPU) -> PvState:
    """`vcpu.pv`, set by pvhyp/pv/state's create hook."""
    return _set_up(vcpu.pv, vcpu, "vcpu.pv")


def timers_of(vcpu: VCPU) -> VcpuTimers:
    """`vcpu.timer`, set by pvhyp/time's create hook."""
    return _set_up(vcpu.timer, vcpu, "vcpu.timer")


def sched_unit_of(vcpu: VCPU) -> SchedUnit:
    """`vcpu.sched`, set by pvhyp/sched's create hook."""
    return _set_up(vcpu.sched, vcpu, "vcpu.sched")


def mm_of(domain: Domain) -> DomainMM:
    """`domain.mm`, set by pvhyp/mm's create hook."""
    return _set_up(domain.mm, domain, "domain.mm")


def evtchn_of(domain: Domain) -> DomainEvtchn:
    """`domain.evtchn`, set by pvhyp/event_channel's create hook."""
    return _set_up(domain.evtchn, domain, "domain.evtchn")


class VCPU:
    def __init__(self, domain: "Domain", vcpu_id: int):
        self.domain = domain
        self.vcpu_id = vcpu_id
        self.online = False             # VCPUOP_up / initialised context
        self.blocked = False            # SCHEDOP_block: waits for an event
        self.pause_count = 0

        # Xen PV guest mode and page-table bases (machine frame numbers).
        self.kernel_mode = True
        self.guest_table = 0            # kernel L4 (CR3 in kernel mode)
        self.guest_table_user = 0       # user L4 (CR3 in user mode), 0 = none

        # Where this vCPU's vcpu_info lives (machine address): in shared_info
        # for vcpu_id < XEN_LEGACY_MAX_VCPUS until VCPUOP_register_vcpu_info.
        self.vcpu_info_maddr = 0

        # --- the PV entry path the CPU engine runs (pvhyp/cpu/runner.py sets it;
        # None for a process domain's vCPU, or before its first run) ---
        self.arch: PvEntry | None = None

        # --- timers / time (pvhyp/time) ---
        self.timer: VcpuTimers | None = None

        # --- PV-visible vCPU state (pvhyp/pv/state) and scheduling (pvhyp/sched) ---
        self.pv: PvState | None = None
        self.sched: SchedUnit | None = None
        # SCHEDOP_poll's port while the vCPU polls (Xen's v->poll_evtchn): set by the
        # scheduler, cleared by the event channel that fires; -1 = several ports.
        self.poll_evtchn: int | None = None

        # --- event channels: ports bound to this vCPU's VIRQs ---
        self.virq_to_evtchn: dict[int, int] = {}

        # The vcpu_guest_context given by XEN_DOMCTL_setvcpucontext before the vCPU
        # first ran (pvhyp/domctl.py), parsed; getvcpucontext reads it back.
        self.initial_context: dict | None = None

        # Processes (dom0, Python guests) are woken here; x86 vCPUs by the engine.
        self.wake_callback: Callable[[VCPU], None] | None = None

    @property
    def current_table(self) -> int:
        """The L4 the CPU is using now (kernel or user, as Xen switches them)."""
        if self.kernel_mode or not self.guest_table_user:
            return self.guest_table
        return self.guest_table_user

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` where it may touch this vCPU's state (its vcpu_info, registers).

        With an engine, `vcpu.arch.post` queues it for the vCPU's own thread
        while the vCPU runs: unicorn's locked instructions are not atomic
        against host threads. Without one, run it now.
        """
        if self.arch is not None:
            self.arch.post(fn)
        else:
            fn()

    def kick(self) -> None:
        """Make the vCPU notice new work (a pending event) soon."""
        self.blocked = False
        if self.sched is not None:
            self.domain.hv.sched.wake(self)
        if self.wake_callback is not None:
            self.wake_callback(self)


class Domain:
    def __init__(self, hv: "Hypervisor", domid: int, max_vcpus: int, max_pages: int,
                 privileged: bool = False, paging: bool = True, config: dict | None = None):
        self.hv = hv
        self.domid = domid
        self.is_privileged = privileged
        # XEN_DOMCTL_createdomain's configuration (grant/maptrack limits, max_evtchn_port,
        # flags), there before the create hooks run so subsystems can size themselves.
        self.config: dict = dict(config or {})
        # An x86 PV guest addresses memory through its page tables; a process
        # domain (dom0 process, Python guest) passes pseudo-physical addresses.
        self.paging = paging
        self.max_pages = max_pages
        self.tot_pages = 0
        self.p2m: list[int] = []        # pfn -> mfn (INVALID_MFN where unpopulated)
        self.vcpus = [VCPU(self, i) for i in range(max_vcpus)]
        self.shared_info_mfn = 0
        self.vm_assist = 0              # bitmask of VMASST_TYPE_*
        self.lock = threading.RLock()   # the domain lock (Xen's d->page_alloc_lock & friends)

        self.is_dying = False
        self.is_shut_down = False
        self.shutdown_reason: int | None = None
        self.shutdown_code: int | None = None
        self.pause_count = 0
        self.controller_pause_count = 0  # the toolstack's share of pause_count (pvhyp/domctl.py)
        self.name = ""
        self.handle = bytes(16)         # xen_domain_handle_t (the VM's UUID)

        # --- subsystems, each sets its own ---
        self.mm: DomainMM | None = None                 # PV MMU per-domain state (pvhyp/mm)
        self.evtchn: DomainEvtchn | None = None         # event channels (pvhyp/event_channel)
        self.grant_table: GrantTable | None = None      # grant table (pvhyp/grant_table)
        self.console: DomainConsole | None = None       # console_io buffer (pvhyp/console)
        # The frame PHYSDEVOP_pirq_eoi_gmfn registered (hypercalls/physdev.py; Xen's
        # d->arch.pirq_eoi_map_mfn); None until then, and a second registration is -EBUSY.
        self.pirq_eoi_map_mfn: int | None = None
        # Hypercalls this domain made, by number (pvhyp/hypercall_table.py's dispatch counts
        # them, one list increment; `pvhyp inspect` and the domain list's counters read them).
        self.hypercall_counts = [0] * NR_HYPERCALLS

        # Listeners told when the domain shuts down (toolstack, `pvhyp run`).
        self.on_shutdown: list[Callable[[Domain, int], None]] = []

    def __repr__(self) -> str:
        return f"<Domain d{self.domid} pages={self.tot_pages}/{self.max_pages}>"

    def pfn_to_mfn(self, pfn: int) -> int:
        if 0 <= pfn < len(self.p2m):
            return self.p2m[pfn]
        return INVALID_MFN

    def shutdown(self, reason: int) -> None:
        """SCHEDOP_shutdown / domain_crash: stop running, tell the listeners."""
        with self.lock:
            if self.is_shut_down:
                return
            self.is_shut_down = True
            self.shutdown_reason = reason
        for cb in list(self.on_shutdown):
            cb(self, reason)
        for v in self.vcpus:
            v.kick()

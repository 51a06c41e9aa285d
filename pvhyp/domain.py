"""Domains and vCPUs: the objects every subsystem hangs its state on.

Each subsystem keeps its own per-domain / per-vCPU state in one attribute
(`domain.mm`, `domain.evtchn`, `domain.grant_table`, `vcpu.arch`, ...), set
up by that subsystem, so that this file stays the common vocabulary and no
subsystem reaches into another's fields.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pvhyp.hypervisor import Hypervisor

INVALID_MFN = 0xFFFF_FFFF_FFFF_FFFF


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

        # --- CPU engine (pvhyp/cpu) ---
        self.arch: Any = None           # engine-owned register state and trap tables

        # --- timers / time (pvhyp/time) ---
        self.timer: Any = None

        # --- PV-visible vCPU state (pvhyp/pv/state) and scheduling (pvhyp/sched) ---
        self.pv: Any = None
        self.sched: Any = None

        # --- event channels: ports bound to this vCPU's VIRQs ---
        self.virq_to_evtchn: dict[int, int] = {}

        # Processes (dom0, Python guests) are woken here; x86 vCPUs by the engine.
        self.wake_callback = None

    @property
    def current_table(self) -> int:
        """The L4 the CPU is using now (kernel or user, as Xen switches them)."""
        if self.kernel_mode or not self.guest_table_user:
            return self.guest_table
        return self.guest_table_user

    def post(self, fn) -> None:
        """Run `fn` where it may touch this vCPU's state (its vcpu_info, registers).

        The CPU engine replaces this with a queue drained on the vCPU's own
        thread when the vCPU is running: unicorn's locked instructions are not
        atomic against host threads. Without an engine, run it now.
        """
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
                 privileged: bool = False, paging: bool = True):
        self.hv = hv
        self.domid = domid
        self.is_privileged = privileged
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
        self.name = ""
        self.handle = bytes(16)         # xen_domain_handle_t (the VM's UUID)

        # --- subsystems, each sets its own ---
        self.mm: Any = None             # PV MMU per-domain state (pvhyp/mm)
        self.evtchn: Any = None         # event channels (pvhyp/event_channel)
        self.grant_table: Any = None    # grant table (pvhyp/grant_table)
        self.console: Any = None        # console_io buffer and console ring info
        self.process: Any = None        # channel of a process domain (dom0, Python guest)

        # Listeners told when the domain shuts down (toolstack, `pvhyp run`).
        self.on_shutdown: list = []

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

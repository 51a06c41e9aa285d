"""The glue between the CPU engine and the rest of the hypervisor.

`attach(hv)` builds the hypervisor's area of every address space
(hv.xen_l4_slots for the PV MMU) and `hv.cpu`, a CpuSubsystem.  `hv.cpu.start_domain(d)`
gives every vCPU of an x86 PV domain a host thread that runs it under the
scheduler until the domain dies; a vCPU whose register state is not set yet
(offline, waiting for VCPUOP_initialise) just waits in the scheduler.
"""
from __future__ import annotations

import atexit
import threading
import weakref
from typing import TYPE_CHECKING

from abi.sched import SHUTDOWN_crash
from pvhyp.cpu.engine import CpuEngine
from pvhyp.hypercall_table import HypercallContext
from pvhyp.mm.frametable import DOMID_XEN
from pvhyp.pv.engine_interface import EngineFactory, ExitReason
from pvhyp.pv.entry import PvEntry
from pvhyp.pv.state import get_debugreg, set_debugreg
from pvhyp.pv.xen_area import XenArea
from pvhyp.thread_name import name_this_thread

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain

# Guest time per engine run between scheduler checks.
RUN_BUDGET_US = 10_000


_live_subsystems: "weakref.WeakSet[CpuSubsystem]" = weakref.WeakSet()


@atexit.register
def _stop_all_vcpus() -> None:
    """At interpreter exit: get every vCPU thread out of unicorn before finalization
    frees what it runs on (a daemon thread in emu_start holds no GIL to stop it)."""
    for subsystem in list(_live_subsystems):
        subsystem.stop_all(timeout=0.5)


class CpuSubsystem:
    def __init__(self, hv):
        self.hv = hv
        self.xen_area = XenArea(hv.memory, lambda: hv.frames.alloc(DOMID_XEN, 1)[0], hv.m2p_mfns)
        self.threads: dict[tuple[int, int], threading.Thread] = {}
        self.stopping = False
        # The engine each new vCPU runs on (pvhyp.kvm.machine.attach replaces it with KVM's).
        self.make_engine: EngineFactory = CpuEngine
        self.engine_name = "unicorn"
        self.engine_line = "CPU engine: unicorn"     # which engine and why (pvhyp.host sets it)
        self.kvm_machine = None
        _live_subsystems.add(self)

    # --- per vCPU ----------------------------------------------------------
    def cpu_for(self, vcpu: "VCPU") -> PvEntry:
        """The vCPU's PvEntry (created on first use and installed as vcpu.arch)."""
        if vcpu.arch is not None:
            return vcpu.arch
        hv = self.hv
        context = HypercallContext(vcpu)
        mmu = hv.mmu
        cpu = PvEntry(
            hv.memory, self.xen_area, vcpu, self.make_engine,
            dispatch=lambda _cpu, nr, args: hv.hypercalls.dispatch(context, nr, args),
            on_crash=self._guest_crashed,
            ptwr_emulate=mmu.ptwr_emulate,
            on_new_cr3=lambda mfn: mmu.new_guest_cr3(vcpu, mfn) == 0,
            debug_registers=_DebugRegisters(vcpu),
        )
        vcpu.arch = cpu         # vcpu.post now queues for this vCPU's thread
        vcpu.wake_callback = self._wake
        return cpu

    @staticmethod
    def _wake(vcpu: "VCPU") -> None:
        cpu = vcpu.arch
        # On its own thread the event is delivered when the current hook returns.
        if cpu is not None and cpu._on_other_thread():
            cpu.kick()

    def _guest_crashed(self, cpu: PvEntry, reason: str) -> None:
        vcpu = cpu.vcpu
        self.hv.trace.emit("guest_crash", vcpu.domain.domid, vcpu.vcpu_id, reason=reason)

    # --- threads -------------------------------------------------------------
    def start_domain(self, domain: "Domain") -> None:
        for vcpu in domain.vcpus:
            self.start_vcpu(vcpu)

    def start_vcpu(self, vcpu: "VCPU") -> threading.Thread:
        key = (vcpu.domain.domid, vcpu.vcpu_id)
        thread = self.threads.get(key)
        if thread is not None and thread.is_alive():
            return thread
        self.cpu_for(vcpu)
        thread = threading.Thread(target=self._vcpu_main, args=(vcpu,), daemon=True,
                                  name=f"d{vcpu.domain.domid}v{vcpu.vcpu_id}")
        self.threads[key] = thread
        thread.start()
        return thread

    def _vcpu_main(self, vcpu: "VCPU") -> None:
        name_this_thread()
        cpu = self.cpu_for(vcpu)
        sched = self.hv.sched
        domain = vcpu.domain
        try:
            while not self.stopping and sched.wait_to_run(vcpu):
                if self.stopping or domain.is_dying:
                    break       # a dying domain's frames are being freed: no more guest code
                if not cpu.engine.has_state and not self._load_initial_registers(vcpu, cpu):
                    sched.deschedule(vcpu)
                    continue
                reason = cpu.run(timeout_us=RUN_BUDGET_US)
                if reason is ExitReason.HYPERVISOR_ERROR:
                    self.hv.trace.emit("hypervisor_error", domain.domid, vcpu.vcpu_id,
                                       error=repr(cpu.engine.error))
                    domain.shutdown(SHUTDOWN_crash)
                elif reason is ExitReason.GUEST_CRASH:
                    domain.shutdown(SHUTDOWN_crash)
                if sched.slice_expired(vcpu):
                    sched.deschedule(vcpu)
        finally:
            self.threads.pop((domain.domid, vcpu.vcpu_id), None)

    @staticmethod
    def _load_initial_registers(vcpu: "VCPU", cpu: PvEntry) -> bool:
        """The register state the builder or VCPUOP_initialise left for the engine."""
        regs = cpu.pv.initial_user_regs         # cpu.pv is vcpu.pv (PvEntry refuses a vCPU without it)
        if regs is None:
            context = vcpu.initial_context
            regs = context.get("user_regs") if context else None
        if regs is None:
            return False
        cpu.pv.initial_user_regs = None
        cpu.set_user_regs(dict(regs))
        return True

    def stop_all(self, timeout: float = 1.0) -> None:
        """Stop every vCPU thread (hypervisor close, interpreter exit)."""
        self.stopping = True
        for domain in list(self.hv.domains.values()):
            for vcpu in domain.vcpus:
                if vcpu.arch is not None:
                    vcpu.arch.kick()
                self.hv.sched.wake(vcpu)
        for thread in list(self.threads.values()):
            if thread is not threading.current_thread():
                thread.join(timeout)

    def stop_domain(self, domain: "Domain", timeout: float = 5.0) -> None:
        """Wait for the domain's vCPU threads to leave (after shutdown/destroy)."""
        for vcpu in domain.vcpus:
            cpu = vcpu.arch
            if cpu is not None:
                cpu.kick()
            thread = self.threads.get((domain.domid, vcpu.vcpu_id))
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)


class _DebugRegisters:
    """mov to/from %dr as set_debugreg/get_debugreg answer them."""

    def __init__(self, vcpu: "VCPU"):
        self.vcpu = vcpu

    def get(self, reg: int) -> int:
        return get_debugreg(self.vcpu, reg)

    def set(self, reg: int, value: int) -> int:
        return set_debugreg(self.vcpu, reg, value)


def attach(hv) -> None:
    hv.cpu = CpuSubsystem(hv)
    hv.close_hooks.append(hv.cpu.stop_all)
    hv.xen_l4_slots.update(hv.cpu.xen_area.xen_l4_entries())

    def destroyed(domain: "Domain") -> None:
        hv.cpu.stop_domain(domain, timeout=1.0)
        for vcpu in domain.vcpus:
            thread = hv.cpu.threads.get((domain.domid, vcpu.vcpu_id))
            # A thread still inside unicorn keeps its engine: freeing it would crash us.
            cpu = vcpu.arch
            if cpu is not None and (thread is None or not thread.is_alive()):
                vcpu.arch = None
                cpu.close()

    hv.domain_destroy_hooks.append(destroyed)

"""The PV entry path: what happens when a PV guest traps into the hypervisor.

`PvEntry` is the VcpuHost of one CPU engine (pvhyp.pv.engine_interface).  It turns the engine's raw events
into Xen PV behaviour: hypercalls (raw `syscall` from guest kernel mode, the
iret hypercall handled here), the syscall callback for guest user mode,
exception and software-interrupt bounces through the trap table, privileged
instruction and CPUID emulation, port I/O rules, writable page tables, and
the event upcall on every return to the guest.

The PV state itself (trap table, callbacks, kernel stack, segment bases,
IOPL, ...) is pvhyp.pv.state.PvState, changed by the hypercall handlers;
this module reads it and loads into the CPU what they change (pv_changed).
"""
from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Callable

from abi import errno as E
from abi import xen as X
from abi.x86_regs import (
    X86_EFLAGS_IF,
    X86_EFLAGS_MBS,
    PFEC_page_present,
    PFEC_write_access,
    TRAP_debug,
    TRAP_gp_fault,
    TRAP_invalid_op,
    TRAP_page_fault,
)
from abi.xen import VMASST_TYPE_writable_pagetables
from pvhyp.pv import xen_area as L
from pvhyp.pv.change import PvChange
from pvhyp.pv.emulate import FORCED_EMULATION_PREFIX, PrivilegedOps
from pvhyp.pv.engine_interface import GPR_NAMES, CpuState, Engine, EngineFactory, ExitReason
from pvhyp.pv.ro_page_fault import emulate_pagetable_write
from pvhyp.pv.traps import GuestCrash, TrapBouncer

if TYPE_CHECKING:
    from pvhyp.domain import VCPU
    from pvhyp.memory import MachineMemory
    from pvhyp.pv.state import PvState

HYPERVISOR_IRET = X.HYPERCALL_NUMBERS["iret"]   # __HYPERVISOR_iret, which a class body would mangle

_HYPERCALL_ARGS = ("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9", "cs", "rip")

_HYPERCALL_KINDS = {nr: f"hypercall {name}" for name, nr in X.HYPERCALL_NUMBERS.items()}

HypercallDispatch = Callable[["PvEntry", int, tuple], int]


def initial_state(entry: int, stack: int, start_info_va: int, l4_mfn: int) -> CpuState:
    """Registers of a PV64 vCPU as Xen's domain builder starts it: rsi = start_info."""
    state = CpuState(rip=entry, cr3=l4_mfn << 12)
    state.gprs["rsp"] = stack
    state.gprs["rsi"] = start_info_va
    return state


class PvEntry:
    """The CPU side of one PV vCPU; the glue installs it as `vcpu.arch`.

    `vcpu` is a pvhyp.domain.VCPU whose `pv` (pvhyp.pv.state.PvState) holds
    the PV state; `dispatch(entry, nr, args) -> int` runs hypercalls.
    """

    def __init__(self, memory: "MachineMemory", xen_area: L.XenArea, vcpu: "VCPU",
                 make_engine: EngineFactory,
                 dispatch: HypercallDispatch | None = None,
                 on_crash: Callable[["PvEntry", str], None] | None = None,
                 ptwr_emulate: Callable | None = None,
                 on_new_cr3: Callable[[int], bool] | None = None,
                 debug_registers=None,
                 io_handler: Callable | None = None):
        self.vcpu = vcpu
        self.vcpu_id = vcpu.vcpu_id
        if vcpu.pv is None:
            raise ValueError(f"vcpu{vcpu.vcpu_id} has no PV state (pvhyp.pv.state's create hook sets it)")
        self.pv: PvState = vcpu.pv
        self.dispatch = dispatch
        self.on_crash = on_crash
        self.ptwr_emulate = ptwr_emulate
        self.io_handler = io_handler
        self.crash_reason: str | None = None
        self.engine: Engine = make_engine(memory, xen_area, self)
        self.bouncer = TrapBouncer(self.engine, self.pv)
        self.priv = PrivilegedOps(self.engine, self.pv, self.bouncer, self.vcpu_id, on_new_cr3, debug_registers)
        self.watchpoints = self.engine.make_watchpoints(
            self.pv, lambda: self._guarded(self.bouncer.bounce_exception, TRAP_debug))
        # emulated: privileged instructions and cpuid; ptwr: guest writes to its page tables
        self.counts = {"hypercall": 0, "exception": 0, "emulated": 0, "ptwr": 0}
        # Every entry into the hypervisor by kind ("hypercall mmu_update", "#GP emulated",
        # "in", ...): what `pvhyp bench boot` prints, to show which exits a boot pays for.
        self.exits: collections.Counter[str] = collections.Counter()
        self._running_thread: threading.Thread | None = None
        self._posted: collections.deque = collections.deque()
        self._flush_requested = False
        # Held while deciding "queue it or run it now" and while running it now, and to
        # enter or leave run(): work done on another thread never overlaps guest code.
        self._post_lock = threading.RLock()
        self._closed = False        # close(): the vCPU is gone, late work is dropped

    # --- starting and running --------------------------------------------
    def start(self, state: CpuState) -> None:
        """Load a register state (kernel mode, CR3 = the vCPU's kernel table)."""
        self.pv.kernel_mode = True
        self.vcpu.guest_table = state.cr3 >> 12
        self.pv.fs_base, self.pv.gs_base_kernel = state.fs_base, state.gs_base
        self.engine.load_state(state)

    def set_user_regs(self, regs: dict) -> None:
        """A cpu_user_regs (VCPUOP_initialise / the builder) with the PV state already loaded."""
        state = CpuState(gprs={name: regs.get(name, 0) for name in GPR_NAMES},
                         rip=regs.get("rip", 0), rflags=regs.get("rflags", X86_EFLAGS_MBS | X86_EFLAGS_IF),
                         cs=regs.get("cs", L.FLAT_KERNEL_CS), ss=regs.get("ss", L.FLAT_KERNEL_SS),
                         ds=regs.get("ds", 0), es=regs.get("es", 0), fs=regs.get("fs", 0), gs=regs.get("gs", 0))
        pv = self.pv
        state.fs_base = pv.fs_base
        state.gs_base = pv.gs_base_kernel if pv.kernel_mode else pv.gs_base_user
        state.cr3 = self.vcpu.current_table << 12
        self.engine.load_state(state)
        self.engine.set_cr0_ts(pv.cr0_ts)
        self._sync_gdt()

    def run(self, max_insns: int = 0, timeout_us: int = 0) -> ExitReason:
        hv = self.vcpu.domain.hv
        trace = hv.trace if hv is not None and hv.trace.enabled else None    # None: no hypervisor (bench)
        started = trace.now() if trace is not None else 0.0
        reason = None
        with self._post_lock:       # waits for work another thread is applying right now
            self._running_thread = threading.current_thread()
        try:
            self._drain_posted()
            reason = self.engine.run(max_insns, timeout_us)
            return reason
        finally:
            with self._post_lock:
                self._running_thread = None
            if trace is not None:       # the timeline's "vCPU in the engine" slice (hooks nest inside)
                trace.record("run", self.vcpu.domain.domid, self.vcpu.vcpu_id, t=started,
                           dur=trace.now() - started, exit=reason.value if reason is not None else "error")

    def kick(self) -> None:
        self.engine.kick()

    def crash(self, reason: str) -> None:
        self.crash_reason = reason
        if self.on_crash is not None:
            self.on_crash(self, reason)
        self.engine.request_exit(ExitReason.GUEST_CRASH)

    # --- requests from other subsystems (any thread) ------------------------
    def _on_other_thread(self) -> bool:
        running = self._running_thread
        return running is not None and running is not threading.current_thread()

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on this vCPU's thread (now, if that is us or it is not running).

        The choice and the work happen under `_post_lock`, which run() takes to start:
        checked without it, a vCPU thread entering run() between our "not running" and
        the end of `fn` ran guest code beside our read-modify-write of the same words
        (unicorn's locked instructions, and KVM's guest, are not atomic against our
        stores), and a guest's `xchg` of evtchn_pending_sel or `lock btr` of a pending
        bit undid the bit we had just set: an event lost for good, a netfront asleep on
        a ring with answers in it. Work queued earlier runs first, so a queued clear
        never lands after a later set.
        """
        with self._post_lock:
            if self._closed:
                return
            if self._on_other_thread():
                self._posted.append(fn)
            else:
                self._drain_posted()
                fn()
                return
        self.engine.kick()

    def close(self) -> None:
        """The vCPU is gone for good (its domain destroyed, its thread ended).

        Other threads may still hold this entry (they read `vcpu.arch` just before the
        destroy): under the post lock, so none is half-way through post() or
        flush_tlb(), their late work is dropped from now on (it would touch a dead
        domain's registers and the vCPU window, which another vCPU may own next) and
        the engine is released.
        """
        with self._post_lock:
            self._closed = True
            self._posted.clear()
            self._flush_requested = False
            self.engine.close()

    def _drain_posted(self) -> None:
        if self._flush_requested:
            self._flush_requested = False
            self._sync_cr3()
        while self._posted:
            self._posted.popleft()()

    def flush_tlb(self) -> None:
        """A translation may have changed (PTE write, new base pointer): reload CR3 and flush."""
        with self._post_lock:       # see post()
            if self._closed:
                return
            if self._on_other_thread():
                self._flush_requested = True
            else:
                self._sync_cr3()
                return
        self.engine.kick()

    def _sync_cr3(self) -> None:
        self.engine.set_cr3(self.vcpu.current_table << 12)

    def pv_changed(self, change: PvChange) -> None:
        """pvhyp.pv.change.notify_arch: load a changed value into the CPU."""
        if not isinstance(change, PvChange):
            raise TypeError(f"pv_changed({change!r}): not a PvChange")
        self.post(lambda: self._load_pv_value(change))

    def _load_pv_value(self, change: PvChange) -> None:
        pv, engine = self.pv, self.engine
        if not engine.entered:
            return              # set_user_regs / start loads everything
        if change is PvChange.FS_BASE:
            engine.write("fs_base", pv.fs_base)
        elif change in (PvChange.GS_BASE_KERNEL, PvChange.GS_BASE_USER):
            if (change is PvChange.GS_BASE_KERNEL) == pv.kernel_mode:
                engine.write("gs_base", pv.gs_base_kernel if pv.kernel_mode else pv.gs_base_user)
        elif change is PvChange.GS_SEL_USER:
            # One GS selector register serves both modes; loading it resets
            # the base, so the running mode's base goes back afterwards.
            engine.load_data_selector("gs", pv.gs_sel_user)
            engine.write("gs_base", pv.gs_base_kernel if pv.kernel_mode else pv.gs_base_user)
        elif change is PvChange.GDT:
            self._sync_gdt()
        elif change is PvChange.CR0_TS:
            engine.set_cr0_ts(pv.cr0_ts)
        elif change is PvChange.DEBUGREG:
            self.watchpoints.reload()
        else:
            raise ValueError(f"no engine register holds {change}")

    def _sync_gdt(self) -> None:
        if self._closed:        # the window is not ours any more
            return
        pv = self.pv
        count = (pv.gdt_ents + 511) // 512
        self.engine.xen_area.set_guest_gdt(self.engine.window, pv.gdt_frames[:count])
        self.engine.flush_tlb()

    # --- VcpuHost ------------------------------------------------------------
    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
            if self.bouncer.deliver_pending_events():
                self.exits["event upcall"] += 1
        except GuestCrash as err:
            self.crash(str(err))

    def on_resume(self, engine: Engine) -> None:
        self._guarded(lambda: None)

    def on_hypercall(self, engine: Engine) -> None:
        self._guarded(self._hypercall)

    def _hypercall(self) -> None:
        if not self.pv.kernel_mode:
            self.bouncer.bounce_syscall_from_user()
            return
        self.counts["hypercall"] += 1
        nr, rdi, rsi, rdx, r10, r8, r9, cs, rip = self.engine.read_many(_HYPERCALL_ARGS)
        if cs != L.FLAT_KERNEL_CS:
            # SYSCALL loads Xen's flat selectors and Xen returns with SYSRET:
            # whatever CS the guest had, it comes back with the flat one.
            self.engine.set_stack_and_code_selectors(L.FLAT_KERNEL_CS, L.FLAT_KERNEL_SS)
        self.exits[_HYPERCALL_KINDS.get(nr, "hypercall other")] += 1
        if nr == HYPERVISOR_IRET:
            self.bouncer.do_iret()
            return
        result = -E.ENOSYS if self.dispatch is None else self.dispatch(self, nr, (rdi, rsi, rdx, r10, r8, r9))
        if self.engine.rip_moved:
            return             # the handler moved the guest (e.g. a bounce); it owns rax too
        # Past the syscall, so that an event upcall saves the right return
        # address (the engine does not touch unicorn's RIP for this one).
        self.engine.write_many({"rax": result, "rip": rip + 2})
        if self._must_stop():
            self.engine.request_exit(ExitReason.REQUESTED)
            return
        self._drain_posted()

    def _must_stop(self) -> bool:
        """After a hypercall: the domain shut down or paused, or this vCPU went down."""
        vcpu = self.vcpu
        domain = vcpu.domain
        if domain.hv is None:
            return False        # an engine without a hypervisor (bench): nothing stops it
        return (domain.is_shut_down or domain.is_dying or domain.pause_count > 0
                or vcpu.pause_count > 0 or not vcpu.online)

    def on_exception(self, engine: Engine, vector: int, error_code: int, cr2: int) -> None:
        self._guarded(self._exception, vector, error_code, cr2)

    def _exception(self, vector: int, error_code: int, cr2: int) -> None:
        self.counts["exception"] += 1
        if vector == TRAP_gp_fault and error_code == 0:
            if self.priv.emulate_privileged(self.engine.read("rip")):
                self.counts["emulated"] += 1
                self.exits["#GP emulated"] += 1
                return
        if (vector == TRAP_page_fault and self.ptwr_emulate is not None and self._writable_pagetables()
                and error_code & (PFEC_page_present | PFEC_write_access) == PFEC_page_present | PFEC_write_access):
            if emulate_pagetable_write(self, cr2):
                self.counts["ptwr"] += 1
                self.exits["#PF page-table write"] += 1
                return
        self.exits[f"exception {vector} bounced"] += 1
        self.bouncer.bounce_exception(vector, error_code, cr2)

    def _writable_pagetables(self) -> bool:
        return bool(self.vcpu.domain.vm_assist >> VMASST_TYPE_writable_pagetables & 1)

    def on_software_interrupt(self, engine: Engine, vector: int, insn_len: int) -> None:
        self.exits[f"int {vector}"] += 1
        self._guarded(self.bouncer.bounce_software_interrupt, vector, insn_len)

    def on_invalid_opcode(self, engine: Engine) -> None:
        self._guarded(self._invalid_opcode)

    def _invalid_opcode(self) -> None:
        rip = self.engine.read("rip")
        if self.priv.serialize(rip):
            self.counts["emulated"] += 1
            self.exits["#UD serialize"] += 1
        elif not self.priv.is_forced_cpuid(rip):
            self.exits["exception 6 bounced"] += 1
            self.bouncer.bounce_exception(TRAP_invalid_op)
        elif self.priv.cpuid_faults():
            # Xen steps over the prefix first: the #GP names the cpuid itself.
            self.engine.write("rip", rip + len(FORCED_EMULATION_PREFIX))
            self.bouncer.bounce_exception(TRAP_gp_fault, 0)
        else:
            self.priv.forced_cpuid(rip)
            self.counts["emulated"] += 1
            self.exits["#UD forced cpuid"] += 1

    def on_cpuid(self, engine: Engine) -> None:
        self.exits["cpuid"] += 1
        if self.priv.cpuid_faults():
            self._fault_at_instruction(engine, TRAP_gp_fault)
            return
        # No event delivery here: a plain cpuid does not enter Xen, and this
        # hook cannot move RIP anyway.
        try:
            self.priv.cpuid()
        except GuestCrash as err:
            self.crash(str(err))

    def _fault_at_instruction(self, engine: Engine, vector: int) -> None:
        """Raise `vector` at the instruction whose hook cannot move RIP (cpuid, in,
        out): the instruction's effects are undone once unicorn has stopped."""
        rip = engine.read("rip")      # exact: unicorn syncs RIP before IN/OUT/CPUID hooks
        engine.rewind_after_stop(rip, lambda: self._guarded(self.bouncer.bounce_exception, vector, 0))

    def on_io(self, engine: Engine, port: int, size: int, value: int | None):
        self.exits["in" if value is None else "out"] += 1
        if self.pv.iopl_ok(self.pv.kernel_mode):
            if self.io_handler is not None:
                return self.io_handler(self, port, size, value)
            return None if value is not None else (1 << (8 * size)) - 1
        self._fault_at_instruction(engine, TRAP_gp_fault)
        return None if value is not None else 0

"""One software CPU per vCPU: unicorn mechanics, no PV policy.

The engine owns a unicorn instance whose physical address space is the whole
machine memory, so CR3 is the machine address of the guest's L4 and the CPU
walks the guest's own page tables.  The guest always runs at CPL3: the first
entry goes through the CPL0 `iretq` stub in the hypervisor's pages, and after
that every transition (trap bounce, iret hypercall, mode switch) is a
register rewrite done inside a hook, which keeps CPL3.

Everything a guest can do that needs the hypervisor ends up as one call on the
`VcpuHost` (see below); the PV logic lives there (pvhyp/pv/entry.py), not
here.  A Python exception escaping a host callback stops the run and is
reported as ExitReason.HYPERVISOR_ERROR; it never propagates into unicorn.
"""
from __future__ import annotations

import operator
import struct
import threading
import time
from typing import Callable

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
    x86_const,
)
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from abi.x86_regs import (
    MSR_EFER,
    X86_CR0_ET,
    X86_CR0_MP,
    X86_CR0_NE,
    X86_CR0_PE,
    X86_CR0_PG,
    X86_CR0_TS,
    X86_CR4_OSFXSR,
    X86_CR4_OSXMMEXCPT,
    X86_CR4_PAE,
    X86_EFLAGS_MBS,
    TRAP_gp_fault,
    TRAP_page_fault,
)
from pvhyp.cpu import unicorn_quirks as quirks
from pvhyp.cpu.fastregs import FastRegisters
from pvhyp.cpu.native_gate import NativeGate
from pvhyp.cpu.watchpoints import Watchpoints
from pvhyp.guest_access import read_guest_virtual
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import GPR_NAMES, CpuState, ExitReason, VcpuHost

# Wall time one emu_start aims at before the engine looks at its clock again:
# the gate's block budget is resized after every slice to about this.
SLICE_US = 1_000
SLICE_BLOCKS_MIN, SLICE_BLOCKS_MAX = 2_000, 1_000_000

# A RIP no instruction can have: `until` for emu_start, so only our own
# stops, budgets and errors end a run.
_NEVER_REACHED = 0x8000_0000_0000_0000

SEGMENT_NAMES = ("cs", "ss", "ds", "es", "fs", "gs")
REG = {name: getattr(x86_const, f"UC_X86_REG_{name.upper()}") for name in
       GPR_NAMES + SEGMENT_NAMES + ("rip", "rflags", "cr0", "cr2", "cr3", "cr4", "fs_base", "gs_base")}

_GPR_BLOCK_INDEX = {name: i for i, name in enumerate(quirks.SNAPSHOT_ORDER)}
_GPR_BLOCK_NAMES = frozenset(_GPR_BLOCK_INDEX)
# The general registers written in place (env->regs[]); not RIP, whose writes unicorn must see.
_GPR_STORE_INDEX = {name: i for i, name in enumerate(quirks.GPR_BLOCK_ORDER) if name != "rip"}


class _ReadPlan:
    """How read_many gets one tuple of registers: picked from the GPR block when it can."""
    __slots__ = ("names", "from_block", "rip_index")

    def __init__(self, names: tuple):
        self.names = names
        self.from_block = None
        if _GPR_BLOCK_NAMES.issuperset(names):
            picker = operator.itemgetter(*(_GPR_BLOCK_INDEX[n] for n in names))
            self.from_block = picker if len(names) > 1 else (lambda block, p=picker: (p(block),))
        self.rip_index = names.index("rip") if "rip" in names else None


class CpuEngine:
    def __init__(self, memory, xen_area: L.XenArea, host: VcpuHost):
        self._context_offsets = quirks.verified_offsets()
        self.memory = memory
        self.xen_area = xen_area
        self.host = host
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.host_address)
        self.window = xen_area.allocate_vcpu_window()
        self.closed = False         # close() gave the window back (see there)
        self._bookkeeping = quirks.ExceptionBookkeeping(uc, self._context_offsets)
        self._gprs = self._bookkeeping.gprs
        self._regs = FastRegisters(uc, REG)
        self._setup_control_state()
        # Reloading a state later (VCPUOP_initialise, a benchmark rerun) needs
        # CPL0 again for the stub; only a context restore can lower the CPL.
        self._cpl0_context = uc.context_save()
        self._add_hooks()
        offsets = self._context_offsets
        self.gate = NativeGate(uc, lambda on: quirks.set_exit_checks(uc, offsets.no_exit_request_offset, on))
        # IN/OUT/CPUID go through the gate's stubs, which can end the run before
        # the instruction retires (a refused `in`, a faulting `cpuid`).
        self.gate.add_instruction_exits(quirks.cpu_state_of(uc, self._context_offsets.cpu_state_offset),
                                        self._native_in, self._native_out, self._native_cpuid)
        self._hook_error: BaseException | None = None
        self.gate.add_syscall_hook(self._native_syscall)
        self._slice_blocks = SLICE_BLOCKS_MIN
        self._entered = False
        self._pending_state: CpuState | None = None
        self._cr0_ts = False
        self.cr3 = 0            # kept here too: reading CR3 back from unicorn may truncate it
        self._stop_reason: ExitReason | None = None
        self._kick_pending = threading.Event()
        self._deferred: list[Callable[[], None]] = []
        self._read_plans: dict[tuple, _ReadPlan] = {}
        self._rip_mode = self._RIP_DIRECT
        self._pending_rip: int | None = None
        self._hook_rip_seen: int | None = None
        self.error: BaseException | None = None
        self.unmapped_accesses = 0

    # --- machine setup ---------------------------------------------------
    def _setup_control_state(self) -> None:
        uc = self.uc
        uc.reg_write(x86_const.UC_X86_REG_CR4, X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT)
        uc.msr_write(MSR_EFER, quirks.LONG_MODE_EFER)
        # WP off: the CPU's implicit supervisor writes (descriptor accessed
        # bits) must not fault on the read-only guest GDT frames; guest code
        # is CPL3 and stays bound by RW.
        uc.reg_write(x86_const.UC_X86_REG_CR0,
                     X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG)
        uc.reg_write(x86_const.UC_X86_REG_GDTR, (0, self.xen_area.gdt_va(self.window), L.GDT_LIMIT, 0))
        uc.reg_write(x86_const.UC_X86_REG_IDTR, (0, L.IDT_VA, 0xFFF, 0))
        uc.reg_write(x86_const.UC_X86_REG_TR, (L.TSS_SELECTOR, L.TSS_VA, L.TSS_SIZE - 1, 0x8B))

    def _add_hooks(self) -> None:
        uc = self.uc
        uc.hook_add(UC_HOOK_INTR, self._hook_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._hook_invalid)
        # Bounded to addresses past machine memory: an unbounded memory hook of any
        # kind makes unicorn take its slow path (and a TB-invalidation check) on every
        # guest store, which cost ~10x on store-heavy code.
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._hook_unmapped, None, self.memory.size, (1 << 64) - 1)

    def close(self) -> None:
        """Give the vCPU window back; the unicorn instance is freed once nothing reaches it.

        Not uc_close here: other threads may still hold this engine (a flush or a post
        that read `vcpu.arch` just before the domain was destroyed, a register read for
        `pvhyp inspect` or a crash line), and a call through a closed handle writes into
        whatever unicorn allocated next in that memory, often a new vCPU's CPU state or
        TLB: the hypervisor died with a store to a guest address from inside unicorn
        after three guests were powered off and three new ones created.  Uc's own
        finalizer closes the handle when the last reference goes, when by definition
        no thread can call it; unicorn instances share no state, so that may happen on
        any thread.  Idempotent.
        """
        if not self.closed:
            self.closed = True
            self.xen_area.release_vcpu_window(self.window)

    # --- register access -----------------------------------------------
    # Inside some hooks a RIP write cannot go straight to unicorn: after the
    # SYSCALL hook unicorn adds the instruction length to whatever RIP is,
    # and after CPUID/IN/OUT hooks it overwrites RIP.  So RIP writes made
    # there are held here and applied when the hook ends (see _finish_hook).
    _RIP_DIRECT, _RIP_AFTER_SYSCALL, _RIP_AFTER_STOP = 0, 1, 2

    def read(self, name: str) -> int:
        if name == "rip" and self._pending_rip is not None:
            return self._pending_rip
        # One context save (all GPRs) is cheaper than one register read call.
        index = _GPR_BLOCK_INDEX.get(name)
        if index is not None:
            value = self._bookkeeping.snapshot_gprs()[index]
        else:
            value = self._regs.read((name,))[0]
        if name == "rip":
            self._hook_rip_seen = value
        return value

    def write(self, name: str, value: int) -> None:
        if name == "rip" and self._rip_mode != self._RIP_DIRECT:
            self._pending_rip = value & 0xFFFF_FFFF_FFFF_FFFF
            return
        index = _GPR_STORE_INDEX.get(name)
        if index is not None:
            self._gprs[index] = value & 0xFFFF_FFFF_FFFF_FFFF
        else:
            self._regs.write((name,), (value,))

    def read_many(self, names: tuple) -> tuple:
        """Several registers in one unicorn call (the hypercall path reads its
        six arguments, number, CS and RIP with one context save)."""
        plan = self._read_plans.get(names)
        if plan is None:
            plan = self._read_plans[names] = _ReadPlan(tuple(names))
        if plan.from_block is not None:
            values = plan.from_block(self._bookkeeping.snapshot_gprs())
        else:
            values = self._regs.read(plan.names)
        if plan.rip_index is not None:
            if self._pending_rip is not None:
                i = plan.rip_index
                values = values[:i] + (self._pending_rip,) + values[i + 1:]
            else:
                self._hook_rip_seen = values[plan.rip_index]
        return values

    def write_many(self, values: dict) -> None:
        """GPRs are stored straight into the CPU's state (what uc_reg_write does for
        them, without the call); RIP and the rest go through unicorn, which must
        know of those writes."""
        others = {}
        gprs = self._gprs
        for name, value in values.items():
            index = _GPR_STORE_INDEX.get(name)
            if index is not None:
                gprs[index] = value & 0xFFFF_FFFF_FFFF_FFFF
            elif name == "rip" and self._rip_mode != self._RIP_DIRECT:
                self._pending_rip = value & 0xFFFF_FFFF_FFFF_FFFF
            else:
                others[name] = value
        if others:
            self._regs.write(tuple(others), tuple(others.values()))

    @property
    def rip_moved(self) -> bool:
        """True inside a SYSCALL/CPUID/IO hook once the host has set a new RIP."""
        return self._pending_rip is not None

    def _begin_hook(self, rip_mode: int) -> None:
        self._rip_mode = rip_mode
        self._pending_rip = None
        self._hook_rip_seen = None

    def _finish_hook(self) -> None:
        target, mode = self._pending_rip, self._rip_mode
        self._rip_mode, self._pending_rip = self._RIP_DIRECT, None
        if target is None:
            return
        if mode == self._RIP_AFTER_SYSCALL:
            bias = self._context_offsets.syscall_rip_bias
            if self._hook_rip_seen is None or target != self._hook_rip_seen + 2 or bias != 2:
                # Through the batch call: uc_reg_write(RIP) inside a run also sets unicorn's
                # skip_sync_pc_on_exit, which nothing clears until the next emu_start, and
                # from then on IN/OUT/CPUID/memory hooks see a stale RIP.
                self._regs.write(("rip",), ((target - bias) & 0xFFFF_FFFF_FFFF_FFFF,))
        else:
            self.gate.exit_before_instruction()
            self.defer_to_next_stop(lambda: self.uc.reg_write(x86_const.UC_X86_REG_RIP, target))

    def load_state(self, state: CpuState) -> None:
        """Replace the register state; the next run() enters through the stub."""
        self._pending_state = state
        self._entered = False

    @property
    def has_state(self) -> bool:
        """A register state was loaded (it may not have run yet)."""
        return self._entered or self._pending_state is not None

    @property
    def entered(self) -> bool:
        """True once guest code runs from this state (registers live in unicorn)."""
        return self._entered

    def set_cr0_ts(self, ts: bool) -> None:
        """The guest's virtual CR0.TS: with it set, FPU/SSE use raises #NM (Xen's lazy FPU)."""
        self._cr0_ts = ts
        cr0 = self.uc.reg_read(x86_const.UC_X86_REG_CR0)
        wanted = (cr0 | X86_CR0_TS) if ts else (cr0 & ~X86_CR0_TS)
        if wanted != cr0:
            self.uc.reg_write(x86_const.UC_X86_REG_CR0, wanted)

    def set_stack_and_code_selectors(self, cs: int, ss: int) -> None:
        """CS/SS selectors (already validated: unicorn loads any value, and keeps 64-bit mode)."""
        old_cs, old_ss = self._regs.read(("cs", "ss"))
        if ss != old_ss:
            self.uc.reg_write(x86_const.UC_X86_REG_SS, ss & 0xFFFF)
        if cs != old_cs:
            self.uc.reg_write(x86_const.UC_X86_REG_CS, cs & 0xFFFF)

    def load_data_selector(self, seg: str, selector: int) -> bool:
        """Load DS/ES/FS/GS as the guest would; an unusable selector loads NUL."""
        try:
            self.uc.reg_write(REG[seg], selector & 0xFFFF)
            return True
        except UcError:
            self.uc.reg_write(REG[seg], 0)
            return False

    # --- TLB / address space -------------------------------------------
    def make_watchpoints(self, pv, raise_debug_exception: Callable[[], None]) -> Watchpoints:
        """%dr0-3/%dr7 data breakpoints as unicorn memory hooks on this engine."""
        return Watchpoints(self, pv, raise_debug_exception)

    def flush_tlb(self) -> None:
        """Forget cached translations (after PTE changes the CPU may have cached)."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def set_cr3(self, maddr: int) -> None:
        """Load CR3; unicorn's CR3 write flushes the TLB itself (cpu_x86_update_cr3 with
        paging on), and the batch call costs one C call (the PV MMU calls this after
        every page-table update)."""
        self.cr3 = maddr
        self._regs.write(("cr3",), (maddr,))

    # --- running -----------------------------------------------------------
    def kick(self) -> None:
        """From any thread: make run() return with KICKED before the guest's next
        block (the native gate stops unicorn from this vCPU's thread: see run())."""
        self._kick_pending.set()
        self.gate.request_stop()

    def request_exit(self, reason: ExitReason = ExitReason.REQUESTED) -> None:
        """From a host callback: leave run() once the current hook returns."""
        self._stop_reason = reason
        self.uc.emu_stop()

    def rewind_after_stop(self, rip: int, action: Callable[[], None]) -> None:
        """From an IN/OUT/CPUID hook: the instruction does not retire; the run ends
        with RIP = `rip` (the instruction) and nothing after it executed, then `action`.

        The gate's stub leaves unicorn through QEMU's cpu_loop_exit once the hook
        returns (pvhyp.cpu.native_gate), as QEMU's helpers do to raise a fault.
        """
        self.gate.exit_before_instruction()

        def at_instruction() -> None:
            self.uc.reg_write(x86_const.UC_X86_REG_RIP, rip)
            action()
        self.defer_to_next_stop(at_instruction)

    def defer_to_next_stop(self, action: Callable[[], None]) -> None:
        """Run `action` outside unicorn once the run stops, without asking for the stop:
        for a hook that has armed a precise stop with the gate (watchpoints)."""
        self._deferred.append(action)

    def defer_after_stop(self, action: Callable[[], None]) -> None:
        """Run `action` after the current instruction retires, outside unicorn.

        For outcomes a hook cannot produce in place: a denied `in` must fault
        without unicorn writing the port value into RAX afterwards.
        """
        self._deferred.append(action)
        self.uc.emu_stop()

    def run(self, max_insns: int = 0, timeout_us: int = 0) -> ExitReason:
        """Run guest code until a budget is used, a kick, or a host request.

        `max_insns` caps the guest's blocks (0: no cap; a block is one or more
        instructions, so this is a safety bound, not an exact count),
        `timeout_us` the wall time (0: none); either ends the run with BUDGET.

        Runs are not counted: unicorn executes translated code with no
        per-instruction hook.  Nothing but this vCPU's own thread ever stops
        unicorn.  A stop from another thread (`emu_stop`, or `emu_start`'s
        timeout, which is a timer thread calling it) lands right after the
        guest's next memory access, and unicorn then resumes at the start of
        that instruction: an `incl mem` or `lock cmpxchg` that had already
        stored runs twice (measured: about one in every stop).  So a kick only
        sets the native gate's flag (pvhyp.cpu.native_gate), and the gate's
        block hook, on this thread, stops unicorn before the next block, where
        nothing of the block has run.  The same hook ends each slice after a
        budget of blocks sized to about SLICE_US, so the wall-time budget is
        looked at within about a millisecond even in a guest loop that never exits.
        """
        self._stop_reason = None
        gate = self.gate
        deadline = time.monotonic_ns() + timeout_us * 1000 if timeout_us else None
        remaining = max_insns or None
        try:
            if not self._entered:
                self._enter_through_stub()
            self.host.on_resume(self)
            while True:
                # Clear the gate first: a kick landing after this sets it again.
                gate.clear_stop()
                if self._stop_reason is not None:
                    return self._stop_reason
                if self._kick_pending.is_set():
                    self._kick_pending.clear()
                    return ExitReason.KICKED
                if remaining is not None and remaining <= 0:
                    return ExitReason.BUDGET
                started = time.monotonic_ns()
                if deadline is not None and started >= deadline:
                    return ExitReason.BUDGET
                budget = self._slice_blocks if remaining is None else min(self._slice_blocks, remaining)
                gate.set_budget(budget)
                blocks_before = gate.blocks
                rip = self.uc.reg_read(x86_const.UC_X86_REG_RIP)
                try:
                    self.uc.emu_start(rip, _NEVER_REACHED)
                    self._bookkeeping.rearm()
                    if self._hook_error is not None:
                        error, self._hook_error = self._hook_error, None
                        raise error
                except UcError as err:
                    if not self._recover_from_unicorn_error(err):
                        raise
                    continue
                ran = gate.blocks - blocks_before
                if remaining is not None:
                    remaining -= max(ran, 1)
                self._resize_slice(ran, time.monotonic_ns() - started)
                gate.absorb_samples(self._read_code)
                if self._deferred:
                    actions, self._deferred = self._deferred, []
                    for action in actions:
                        action()
        except Exception as err:   # a hypervisor bug must crash the domain, not the process
            self.error = err
            return ExitReason.HYPERVISOR_ERROR

    def _resize_slice(self, blocks: int, elapsed_ns: int) -> None:
        """Aim the next slice's block budget at about SLICE_US (only from slices that used theirs)."""
        if blocks < self._slice_blocks or elapsed_ns <= 0:
            return
        wanted = blocks * SLICE_US * 1000 // elapsed_ns
        self._slice_blocks = max(SLICE_BLOCKS_MIN, min(SLICE_BLOCKS_MAX, (self._slice_blocks + wanted) // 2))

    def _read_code(self, address: int, size: int) -> bytes | None:
        return read_guest_virtual(self.memory, self.cr3, address, size)

    def guest_instructions(self) -> int | None:
        """Guest instructions run so far, estimated from sampled blocks (runs are not counted)."""
        return self.gate.estimated_instructions()

    def _enter_through_stub(self) -> None:
        state = self._pending_state
        if self.closed:         # its window may be another vCPU's now
            raise RuntimeError("run() after close(): this engine's vCPU window was given back")
        if state is None:       # run() reports it as a hypervisor error
            raise RuntimeError("run() before load_state(): no register state to enter with")
        frame = struct.pack("<5Q", state.rip, state.cs | 3, state.rflags | X86_EFLAGS_MBS, state.gprs["rsp"], state.ss | 3)
        frame_va = self.xen_area.entry_stack_top(self.window) - len(frame)
        frame_maddr = self.xen_area.entry_stack_maddr(self.window) + L.PAGE_SIZE - len(frame)
        self.memory.write(frame_maddr, frame)
        uc = self.uc
        uc.context_restore(self._cpl0_context)
        self.set_cr0_ts(self._cr0_ts)
        self.set_cr3(state.cr3)
        uc.reg_write(x86_const.UC_X86_REG_CR2, state.cr2)
        for seg in ("ds", "es", "fs", "gs"):
            self.load_data_selector(seg, getattr(state, seg))
        # After the selectors (loading one resets its base); the iretq keeps them.
        self.write_many({n: v for n, v in state.gprs.items() if n != "rsp"})
        self.write_many({"fs_base": state.fs_base, "gs_base": state.gs_base})
        uc.reg_write(x86_const.UC_X86_REG_RSP, frame_va)
        # The run loop starts at the stub and the iretq drops straight into the
        # guest.  A separate emu_start just for the iretq is worse: unicorn then
        # touches the stub page again at the next emu_start, now at CPL3, and
        # the hidden #PF it takes turns the guest's next #GP into #DF.
        uc.reg_write(x86_const.UC_X86_REG_RIP, L.ENTRY_STUB_VA)
        self._entered = True

    def _recover_from_unicorn_error(self, err: UcError) -> bool:
        """Guest-caused unicorn errors become guest faults; False if it is ours."""
        if self._unmapped_fault is not None:
            vector, error_code, cr2 = self._unmapped_fault
            self._unmapped_fault = None
            self.host.on_exception(self, vector, error_code, cr2)
            return True
        return False

    _unmapped_fault = None

    # --- hooks (all run on the vCPU thread, inside emu_start) -------------
    def _hook_intr(self, uc, vector, _):
        error_code, software = self._bookkeeping.consume()
        if software:
            rip = uc.reg_read(x86_const.UC_X86_REG_RIP)
            self.host.on_software_interrupt(self, vector, self._software_int_length(rip, vector))
        else:
            cr2 = uc.reg_read(x86_const.UC_X86_REG_CR2) if vector == TRAP_page_fault else 0
            self.host.on_exception(self, vector, error_code, cr2)

    def _software_int_length(self, rip: int, vector: int) -> int:
        # `int3` and `into` are one byte, `int N` two; tell them apart by the bytes before RIP.
        if vector not in (3, 4):
            return 2
        data = read_guest_virtual(self.memory, self.cr3, rip - 2, 2)
        return 2 if data is not None and data[0] == 0xCD and data[1] == vector else 1

    def _hook_syscall(self, uc, _):
        self._begin_hook(self._RIP_AFTER_SYSCALL)
        try:
            self.host.on_hypercall(self)
        finally:
            self._finish_hook()

    def _hook_cpuid(self, uc, _):
        self._begin_hook(self._RIP_AFTER_STOP)
        try:
            self.host.on_cpuid(self)
        finally:
            self._finish_hook()
        return 1

    def _hook_in(self, uc, port, size, _):
        self._begin_hook(self._RIP_AFTER_STOP)
        try:
            value = self.host.on_io(self, port, size, None)
        finally:
            self._finish_hook()
        return 0 if value is None else value & ((1 << (8 * size)) - 1)

    def _hook_out(self, uc, port, size, value, _):
        self._begin_hook(self._RIP_AFTER_STOP)
        try:
            self.host.on_io(self, port, size, value)
        finally:
            self._finish_hook()

    # The stubs' callbacks: a Python exception must not unwind into C.
    def _native_in(self, _uc, port, size, _gate) -> int:
        try:
            return self._hook_in(self.uc, port, size, None)
        except BaseException as err:
            self._fail_in_hook(err)
            return 0

    def _native_out(self, _uc, port, size, value, _gate) -> None:
        try:
            self._hook_out(self.uc, port, size, value, None)
        except BaseException as err:
            self._fail_in_hook(err)

    def _native_syscall(self, _uc, _user_data) -> None:
        try:
            self._hook_syscall(self.uc, None)
        except BaseException as err:
            self._hook_error = err
            self.uc.emu_stop()      # the syscall ends its block: the stop is clean

    def _native_cpuid(self, _uc, _gate) -> int:
        try:
            return self._hook_cpuid(self.uc, None)
        except BaseException as err:
            self._fail_in_hook(err)
            return 1

    def _fail_in_hook(self, err: BaseException) -> None:
        """run() raises it once unicorn has stopped (a HYPERVISOR_ERROR)."""
        self._hook_error = err
        self.gate.exit_before_instruction()

    def _hook_invalid(self, uc, _):
        self.host.on_invalid_opcode(self)
        return True

    def _hook_unmapped(self, uc, access, address, size, value, _):
        # Only reachable if a page table names a frame beyond machine memory
        # (the PV MMU refuses those); the guest gets #GP, never the host an error.
        self.unmapped_accesses += 1
        self._unmapped_fault = (TRAP_gp_fault, 0, 0)
        return False

"""One KVM vCPU per PV vCPU: KVM mechanics, no PV policy (pvhyp/pv holds that).

The guest runs at CPL3 natively inside KVM; everything that needs the
hypervisor reaches Python through a CPL0 stub that exits at once
(pvhyp/kvm/area.py): exceptions come through the IDT, and the hypercall
`syscall` is one of them: EFER.SCE is off, so it raises #UD at the
instruction; kvm_pvm ignores SCE and jumps to LSTAR at CPL3, which points at
a supervisor-only page, so it is a #PF there instead (rcx/r11 clobbered, as Xen's
hypercall ABI allows).  After an exit
the engine holds the guest's registers in Python (the GPRs as kvm_run's synced
registers hold them, RIP/RSP/RFLAGS/CS/SS from the exception frame on the CPL0
stack) and the VcpuHost reads and rewrites them as it does with unicorn.
Returning to the guest takes the cheapest way that does what is needed
(`_enter`): the iret stub when only registers changed (the null hypercall's
path), the return stub when page-table writes are replayed, KVM_SET_SREGS
otherwise (CR3, segment bases and selectors, CR0.TS, after a kick). Costs per null
hypercall on kvm_pvm (CPU, Dec 2026): KVM_RUN about 100 us (kvm_pvm's
syscall and exception delivery: nothing in Python's hands), the rest about 20.

States (`_at`):
  GUEST  KVM holds the guest's state at CPL3 (first entry aside: after a kick).
         The Python copy is fetched only when a host callback needs it.
  STUB   KVM is at CPL0 in a vector stub; the Python copy is the truth.
Rules: every KVM_RUN that changes guest state (registers written, CR3,
queued page-table writes, selectors) enters through a stub (from STUB) or
after KVM_SET_SREGS (from GUEST, or when segment state changes).
Nothing but the run loop on the vCPU's own thread touches the KVM vCPU; other
threads only kick() it (flag, then immediate_exit, then a signal).
"""
from __future__ import annotations

import struct
import threading
import time
from typing import TYPE_CHECKING, Callable

from abi.arch_x86_xen import FIRST_RESERVED_GDT_ENTRY
from abi.x86_regs import (
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
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
    X86_EFLAGS_TF,
    PFEC_insn_fetch,
    PFEC_reserved_bit,
    PFEC_write_access,
    TRAP_debug,
    TRAP_gp_fault,
    TRAP_invalid_op,
    TRAP_page_fault,
)
from pvhyp.guest_access import read_guest_virtual
from pvhyp.kvm import area as A
from pvhyp.kvm import kvm_abi as K
from pvhyp.kvm.m2p import complete_m2p_load, in_m2p
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import GPR_NAMES, CpuState, ExitReason, VcpuHost
from pvhyp.pv.traps import VECTORS_WITH_ERROR_CODE

if TYPE_CHECKING:
    from pvhyp.kvm.machine import KvmMachine, VmState
    from pvhyp.kvm.watchpoints import KvmWatchpoints

# The CPU state guest code runs with: long mode, PAE paging, SSE; WP off so that the
# stubs' and the CPU's implicit supervisor writes (descriptor accessed bits) never
# fault on read-only pages; EFER.SCE off so `syscall` is #UD (the hypercall path).
GUEST_CR0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG
GUEST_CR4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT
GUEST_EFER = EFER_LME | EFER_LMA | EFER_NXE

# KVM segment types (the descriptor's type field)
_CODE_EXEC_READ_ACCESSED = 11
_DATA_READ_WRITE_ACCESSED = 3
_TSS_BUSY_64 = 11

_SYSCALL = b"\x0f\x05"
_INT_N = 0xCD
_CPUID = b"\x0f\xa2"
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_FRAME = struct.Struct("<5Q")       # rip cs rflags rsp ss (what iretq pops)
_U64 = struct.Struct("<Q")

# Page-table writes replayed per return; more at once: the VM drops every shadow page instead.
MAX_REPLAYED_WRITES = 200


class KvmEngine:
    """The Engine (pvhyp.pv.engine_interface) of one vCPU on KVM."""

    GUEST, STUB = "guest", "stub"

    def __init__(self, memory, xen_area: L.XenArea, host: VcpuHost, machine: "KvmMachine",
                 vm_state: "VmState"):
        self.memory = memory
        self.xen_area = xen_area
        self.host = host
        self.machine = machine
        self.vm_state = vm_state
        self.quirks = machine.quirks
        self.kvm_vcpu = vm_state.vm.create_vcpu()
        self.window = xen_area.allocate_vcpu_window()
        self._stack_top_va = xen_area.entry_stack_top(self.window)
        self._stack_maddr = xen_area.entry_stack_maddr(self.window)
        self._stack_top_maddr = self._stack_maddr + L.PAGE_SIZE
        self._tss_va = self._stack_top_va - L.PAGE_SIZE
        self._write_tss()
        self.regs = self.kvm_vcpu.regs          # the guest's GPRs (cffi struct kvm_regs)
        self.rip = self.rsp = 0
        self.rflags = X86_EFLAGS_MBS
        self.cs = L.FLAT_KERNEL_CS
        self.ss = L.FLAT_KERNEL_SS
        self.cr3 = 0
        self.error: BaseException | None = None
        self._at = self.GUEST
        self._entered = False
        self._has_state = False
        self._regs_fresh = False        # self.regs/rip/... hold the guest's current values
        self._dirty = False             # the Python copy changed: return through the stub
        self._load_cr3 = False
        self._sregs_changes: list[Callable] = []   # applied to a fresh KVM_GET_SREGS before the next run
        self._cr0_ts = False
        self._rip_written = False
        self._stop_reason: ExitReason | None = None
        self._kick_pending = threading.Event()
        self._deadline_kick = False
        self._deferred: list[Callable[[], None]] = []
        self._gdt_ptes: tuple[int, ...] = ()
        self._replaying: list[int] = []     # the page-table writes the last return stub replays
        self.exits: dict[str, int] = {}
        self._setup_vcpu()

    # --- machine setup ---------------------------------------------------
    def _write_tss(self) -> None:
        # 64-bit TSS at the bottom of the entry-stack page: RSP0 = the page's top, no I/O bitmap.
        tss = bytearray(L.TSS_SIZE)
        struct.pack_into("<Q", tss, 4, self._stack_top_va)
        struct.pack_into("<H", tss, 0x66, L.TSS_SIZE)
        self.memory.write(self._stack_maddr, bytes(tss))

    def _setup_vcpu(self) -> None:
        vcpu = self.kvm_vcpu
        self.machine.configure_vcpu(vcpu)
        s = vcpu.get_sregs()
        s.cr0, s.cr4, s.efer = GUEST_CR0, GUEST_CR4, GUEST_EFER
        s.gdt.base, s.gdt.limit = self.xen_area.gdt_va(self.window), L.GDT_LIMIT
        s.idt.base, s.idt.limit = A.IDT_VA, A.IDT_LIMIT
        _set_segment(s.tr, self._tss_va, L.TSS_SIZE - 1, L.TSS_SELECTOR, _TSS_BUSY_64, dpl=0, s=0, l=0, db=0, g=0)
        _set_segment(s.ldt, 0, 0, 0, 2, dpl=0, s=0, l=0, db=0, g=0, present=0)
        self._set_cpl0(s)
        vcpu.set_sregs()

    @staticmethod
    def _set_cpl0(s) -> None:
        """CS/SS of the stubs: Xen's ring-0 code segment, a NULL stack segment."""
        _set_segment(s.cs, 0, 0xFFFFFFFF, L.HYPERVISOR_CS, _CODE_EXEC_READ_ACCESSED, dpl=0, s=1, l=1, db=0, g=1)
        _set_segment(s.ss, 0, 0xFFFFFFFF, L.HYPERVISOR_DS, _DATA_READ_WRITE_ACCESSED, dpl=0, s=1, l=0, db=1, g=1)

    def close(self) -> None:
        self.xen_area.release_vcpu_window(self.window)
        self.machine.release_engine(self)

    # --- register access -----------------------------------------------
    _SPECIAL = ("rip", "rsp", "rflags", "cs", "ss")

    def _fresh(self) -> None:
        if not self._regs_fresh:
            self._fetch_guest_state()

    def read(self, name: str) -> int:
        self._fresh()
        if name in self._SPECIAL:
            return getattr(self, name)
        if name in ("fs_base", "gs_base", "ds", "es", "fs", "gs"):
            return self._segment_value(name)
        if name == "cr3":
            return self.cr3
        return int(getattr(self.regs, name))

    def write(self, name: str, value: int) -> None:
        self._fresh()
        value &= MASK64
        self._dirty = True
        if name in self._SPECIAL:
            if name == "rip":
                self._rip_written = True
            setattr(self, name, value)
        elif name in ("fs_base", "gs_base"):
            seg = name[:2]
            self._sregs_changes.append(lambda s: setattr(getattr(s, seg), "base", value))
        else:
            setattr(self.regs, name, value)

    def read_many(self, names: tuple) -> tuple:
        return tuple(self.read(n) for n in names)

    def write_many(self, values: dict) -> None:
        for name, value in values.items():
            self.write(name, value)

    @property
    def rip_moved(self) -> bool:
        return self._rip_written

    def _segment_value(self, name: str) -> int:
        s = self.kvm_vcpu.get_sregs()
        for change in self._sregs_changes:
            change(s)
        if name.endswith("_base"):
            return int(getattr(s, name[:2]).base)
        return int(getattr(s, name).selector)

    def load_state(self, state: CpuState) -> None:
        """Replace the register state; the next run() enters the guest with it."""
        for name in GPR_NAMES:
            if name != "rsp":
                setattr(self.regs, name, state.gprs.get(name, 0) & MASK64)
        self.rip, self.rsp, self.rflags = state.rip, state.gprs.get("rsp", 0), state.rflags | X86_EFLAGS_MBS
        self.cs, self.ss = state.cs | 3, state.ss | 3
        self.cr3 = state.cr3
        self._load_cr3 = True
        self._regs_fresh = True
        self._dirty = True
        self._has_state = True
        self._entered = False
        cr2, cr3 = state.cr2, state.cr3
        fs_base, gs_base = state.fs_base, state.gs_base
        selectors = {seg: getattr(state, seg) for seg in ("ds", "es", "fs", "gs")}

        def apply(s) -> None:
            s.cr2, s.cr3 = cr2, cr3         # the stubs are fetched through the guest's L4
            for seg, selector in selectors.items():
                self._load_selector_cache(s, seg, selector)
            s.fs.base, s.gs.base = fs_base, gs_base
        self._sregs_changes.append(apply)

    @property
    def has_state(self) -> bool:
        return self._has_state

    @property
    def entered(self) -> bool:
        return self._entered

    def set_cr0_ts(self, ts: bool) -> None:
        self._cr0_ts = ts
        self._sregs_changes.append(lambda s: setattr(s, "cr0", (s.cr0 | X86_CR0_TS) if ts else (s.cr0 & ~X86_CR0_TS)))

    def set_stack_and_code_selectors(self, cs: int, ss: int) -> None:
        """Already validated by the PV layer; the return stub's iretq loads them from the GDT."""
        self.write("cs", cs & 0xFFFF)
        self.write("ss", ss & 0xFFFF)

    def load_data_selector(self, seg: str, selector: int) -> bool:
        """DS/ES/FS/GS as a CPL3 load would do it; an unusable selector loads NUL."""
        usable = selector & 0xFFFC == 0 or self._data_descriptor(selector) is not None
        self._sregs_changes.append(lambda s: self._load_selector_cache(s, seg, selector if usable else 0))
        self._dirty = True
        return usable

    def _descriptor(self, selector: int) -> int | None:
        """The GDT descriptor a selector names, read from the GDT window's frames."""
        if selector & 4:
            return None
        index = selector >> 3
        if index >= FIRST_RESERVED_GDT_ENTRY:
            offset = (index - FIRST_RESERVED_GDT_ENTRY) * 8
            return self.memory.read_u64((self.xen_area.reserved_gdt_mfn << 12) + offset) if offset < 4096 else None
        pte = self.xen_area._window_pte(self.window, index // 512)
        if not pte & 1:
            return None
        return self.memory.read_u64((pte & L.PTE_FRAME_MASK) + (index % 512) * 8)

    def _data_descriptor(self, selector: int) -> int | None:
        desc = self._descriptor(selector)
        if desc is None or index_is_null(selector):
            return None
        present, dpl, s_bit, code, readable = desc >> 47 & 1, desc >> 45 & 3, desc >> 44 & 1, desc >> 43 & 1, desc >> 41 & 1
        if not (present and s_bit) or (code and not readable) or dpl < max(3, selector & 3):
            return None
        return desc

    def _load_selector_cache(self, s, seg: str, selector: int) -> None:
        segment = getattr(s, seg)
        desc = self._data_descriptor(selector) if selector & 0xFFFC else None
        if desc is None:
            _set_segment(segment, 0, 0, selector & 3 if selector & 0xFFFC == 0 else 0, 0, dpl=3, s=1, l=0,
                         db=0, g=0, present=0)
            segment.unusable = 1
            return
        self._set_from_descriptor(segment, selector, desc)

    @staticmethod
    def _set_from_descriptor(segment, selector: int, desc: int) -> None:
        base = ((desc >> 16) & 0xFFFFFF) | ((desc >> 56) & 0xFF) << 24
        limit = (desc & 0xFFFF) | ((desc >> 48) & 0xF) << 16
        g = desc >> 55 & 1
        if g:
            limit = (limit << 12) | 0xFFF
        _set_segment(segment, base, limit, selector, desc >> 40 & 0xF | 1, dpl=desc >> 45 & 3, s=1,
                     l=desc >> 53 & 1, db=desc >> 54 & 1, g=g)

    # --- TLB / address space -------------------------------------------
    def make_watchpoints(self, pv, raise_debug_exception: Callable[[], None]):
        from pvhyp.kvm.watchpoints import KvmWatchpoints
        self.watchpoints = KvmWatchpoints(self, pv, raise_debug_exception)
        return self.watchpoints

    watchpoints: "KvmWatchpoints | None" = None

    def flush_tlb(self) -> None:
        """Nothing cached needs dropping but KVM's shadows of what the hypervisor wrote, which
        every entry replays anyway (guest code cannot write its page tables: they are mapped
        read-only); the GDT window's own entries are replayed when they changed."""
        ptes = tuple(self.xen_area._window_pte(self.window, page) for page in range(L.MAX_GUEST_GDT_FRAMES))
        if ptes != self._gdt_ptes:
            first = self.xen_area._window_pte_addr(self.window, 0)
            self.vm_state.queue_writes(first + 8 * page for page in range(L.MAX_GUEST_GDT_FRAMES))
            self._gdt_ptes = ptes

    def trace_flag_changed(self) -> None:
        """The watchpoints started or stopped single-stepping: the next entry sets RFLAGS."""
        self._dirty = True

    def code_segment_is_64bit(self) -> bool:
        desc = self._descriptor(self.cs)
        return desc is None or bool(desc >> 53 & 1)

    def _rflags_for_kvm(self) -> int:
        watchpoints = self.watchpoints
        stepping = watchpoints is not None and watchpoints.stepping
        return self.rflags | X86_EFLAGS_MBS | (X86_EFLAGS_TF if stepping else 0)

    def _rflags_from_kvm(self, rflags: int) -> int:
        watchpoints = self.watchpoints
        return watchpoints.guest_rflags(rflags) if watchpoints is not None else rflags

    def set_cr3(self, maddr: int) -> None:
        self.cr3 = maddr
        self._load_cr3 = True

    # --- running -----------------------------------------------------------
    def kick(self) -> None:
        self._kick_pending.set()
        self.kvm_vcpu.kick()

    def deadline_kick(self) -> None:
        """The machine's ticker: the run's time budget is over."""
        self._deadline_kick = True
        self.kvm_vcpu.kick()

    def request_exit(self, reason: ExitReason = ExitReason.REQUESTED) -> None:
        self._stop_reason = reason

    def rewind_after_stop(self, rip: int, action: Callable[[], None]) -> None:
        """The trapped instruction has not run on KVM (it faulted): only RIP goes back."""
        def rewind() -> None:
            self.write("rip", rip)
            action()
        self._deferred.append(rewind)

    def defer_after_stop(self, action: Callable[[], None]) -> None:
        self._deferred.append(action)

    def _run_deferred(self) -> None:
        while self._deferred:
            actions, self._deferred = self._deferred, []
            for action in actions:
                action()

    def run(self, max_insns: int = 0, timeout_us: int = 0) -> ExitReason:
        """Run guest code until the time budget is used, a kick, or a host request.

        KVM does not count instructions: `max_insns` becomes a time budget at the
        machine's nominal rate (engine-independent callers give `timeout_us`)."""
        self._stop_reason = None
        if self._kick_pending.is_set():
            self._kick_pending.clear()
            return ExitReason.KICKED
        if max_insns:
            budget_us = max(1000, max_insns // 100)
            timeout_us = min(timeout_us, budget_us) if timeout_us else budget_us
        self._deadline_kick = False
        self.machine.set_deadline(self, time.monotonic() + timeout_us / 1e6 if timeout_us else None)
        try:
            if not self._has_state:
                raise RuntimeError("run() before load_state(): no register state to enter with")
            self._entered = True
            self.host.on_resume(self)
            self._run_deferred()
            while True:
                if self._stop_reason is not None:
                    return self._stop_reason
                if self._kick_pending.is_set():
                    self._kick_pending.clear()
                    return ExitReason.KICKED
                if self._deadline_kick:
                    return ExitReason.BUDGET
                if self._regs_fresh and self.watchpoints is not None and self.watchpoints.stepping:
                    self.watchpoints.before_step()
                self._enter()
                exit_reason = self.kvm_vcpu.run()
                self._handle_exit(exit_reason)
                self._run_deferred()
        except Exception as err:   # a hypervisor bug must crash the domain, not the process
            self.error = err
            return ExitReason.HYPERVISOR_ERROR
        finally:
            self.machine.set_deadline(self, None)

    # --- entering the guest ---------------------------------------------------
    def _enter(self) -> None:
        """Make KVM's state the guest's: nothing to do, ioctls, the iret stub or the return stub.

        The return stub (about 20 instructions kvm_pvm emulates one by one) is used only when
        page-table writes must be replayed. From a vector stub with nothing else to change,
        the iret stub (one emulated `iretq` after KVM_SET_REGS) is the cheapest way back, the
        null hypercall's path; otherwise KVM_SET_SREGS/KVM_SET_REGS put the guest's CPL3
        state back directly."""
        writes = self.vm_state.take_writes(MAX_REPLAYED_WRITES)
        if writes is None:                      # too many: every shadow page goes
            self.vm_state.vm.reset_shadow_pages()
            self._count("shadow_reset")
            writes = []
        if self._at == self.GUEST and not (self._dirty or self._load_cr3 or writes or self._sregs_changes):
            self._regs_fresh = False
            return
        if writes:
            self._enter_through_stub(writes)
        elif self._at == self.STUB and not (self._load_cr3 or self._sregs_changes):
            self._enter_through_iret()
        else:
            self._enter_directly()

    def _enter_directly(self) -> None:
        vcpu = self.kvm_vcpu
        s = vcpu.get_sregs()
        entered_from_guest = self._at == self.GUEST
        if entered_from_guest and not self._regs_fresh:
            self._fetch_guest_state(s)
        for change in self._sregs_changes:
            change(s)
        self._sregs_changes = []
        self._load_segment(s.cs, self.cs)
        self._load_segment(s.ss, self.ss)
        if self._load_cr3:
            s.cr3 = self.cr3
        vcpu.set_sregs()
        regs = self.regs
        regs.rip, regs.rsp, regs.rflags = self.rip, self.rsp, self._rflags_for_kvm()
        vcpu.set_regs()
        self._at = self.GUEST
        self._regs_fresh = True
        self._load_cr3 = False
        self._dirty = False
        self._count("entries_direct")
        self._count("entries_direct_after_kick" if entered_from_guest else "entries_direct_for_sregs")

    def _load_segment(self, segment, selector: int) -> None:
        """CS or SS as the CPU loads them at CPL3 (the PV layer validated the selector)."""
        desc = self._descriptor(selector)
        if desc is None:
            raise RuntimeError(f"guest selector {selector:#x} has no descriptor")
        self._set_from_descriptor(segment, selector, desc)

    def _enter_through_iret(self) -> None:
        regs = self.regs
        frame_va = self._stack_top_va - _FRAME.size
        self.memory.write(self._stack_top_maddr - _FRAME.size,
                          _FRAME.pack(self.rip, self.cs, self._rflags_for_kvm(), self.rsp, self.ss))
        saved = regs.rip, regs.rsp, regs.rflags
        regs.rip, regs.rsp, regs.rflags = A.IRET_STUB_VA, frame_va, X86_EFLAGS_MBS
        self.kvm_vcpu.set_regs()
        regs.rip, regs.rsp, regs.rflags = saved
        self._replaying = []
        self._dirty = False
        self._count("entries_through_iret")

    def _enter_through_stub(self, writes: list[int]) -> None:
        vcpu = self.kvm_vcpu
        if self._at == self.GUEST or self._sregs_changes:
            s = vcpu.get_sregs()
            if self._at == self.GUEST:
                if not self._regs_fresh:
                    self._fetch_guest_state(s)
                self._set_cpl0(s)
            for change in self._sregs_changes:
                change(s)
            self._sregs_changes = []
            vcpu.set_sregs()
        self._regs_fresh = True
        regs = self.regs
        frame = _FRAME.pack(self.rip, self.cs, self._rflags_for_kvm(), self.rsp, self.ss)
        frame_va = self._stack_top_va - _FRAME.size
        block_size = 8 * (A.BLOCK_HEADER + len(writes))
        block_va = frame_va - block_size
        # CR3 is always loaded after a replay: KVM then also syncs any shadow page it had
        # let go unsync, and flushes the TLB.
        header = struct.pack("<7Q", len(writes), self.cr3, regs.rax, regs.rcx, regs.rsi, regs.rdi, frame_va)
        block = header + b"".join(_U64.pack(A.directmap_va(w)) for w in writes) + frame
        self.memory.write(self._stack_top_maddr - len(block), block)
        saved = regs.rip, regs.rsp, regs.rflags
        regs.rip, regs.rsp, regs.rflags = A.RETURN_STUB_VA, block_va, X86_EFLAGS_MBS
        vcpu.set_regs()
        regs.rip, regs.rsp, regs.rflags = saved
        self._at = self.STUB
        self._replaying = writes
        self._load_cr3 = False
        self._dirty = False
        self._count("entries_through_stub")

    def _fetch_guest_state(self, sregs=None) -> None:
        """KVM holds the guest at CPL3 (a kick ended the run): copy its state into Python."""
        if self._at != self.GUEST:
            raise RuntimeError("guest state asked for while the vCPU sits in a stub")
        regs = self.kvm_vcpu.get_regs()
        s = sregs if sregs is not None else self.kvm_vcpu.get_sregs()
        self.rip, self.rsp, self.rflags = int(regs.rip), int(regs.rsp), self._rflags_from_kvm(int(regs.rflags))
        self.cs, self.ss = int(s.cs.selector), int(s.ss.selector)
        self._regs_fresh = True

    # --- leaving the guest ---------------------------------------------------
    def _count(self, kind: str) -> None:
        self.exits[kind] = self.exits.get(kind, 0) + 1

    def _handle_exit(self, exit_reason: int) -> None:
        while exit_reason == K.KVM_EXIT_INTR:
            # A kick. Where the vCPU stopped decides what the Python copy is worth.
            self._count("kick")
            rip = self.kvm_vcpu.current_rip()
            if A.in_vector_stubs(rip) or self.kvm_vcpu.exception_in_flight():
                # An exception is on its way (still in KVM, or its frame on the CPL0 stack):
                # its stub must reach its exit before anything touches the vCPU, or KVM would
                # deliver it at whatever RIP the guest was given meanwhile.
                exit_reason = self.kvm_vcpu.run()
                continue
            if A.in_return_stub(rip):
                # Not back in the guest yet: the Python copy is the truth; enter again, with
                # the writes this stub had not finished replaying.
                self.vm_state.queue_writes(self._replaying)
                self._at = self.STUB
                self._dirty = True
            else:
                self._at = self.GUEST
                self._regs_fresh = False
            return
        if exit_reason != K.KVM_EXIT_IO:
            raise RuntimeError(f"KVM exit {K.KVM_EXIT_NAMES.get(exit_reason, exit_reason)}"
                               f"{self._exit_detail(exit_reason)}")
        regs = self.kvm_vcpu.get_regs()
        vector = A.vector_of_stub_exit(int(regs.rip))
        if vector is None:
            raise RuntimeError(f"I/O exit at {int(regs.rip):#x}, outside the hypervisor's stubs")
        self._at = self.STUB
        self._regs_fresh = True
        self._rip_written = False
        self._take_exception(vector, regs)

    def _exit_detail(self, exit_reason: int) -> str:
        run = self.kvm_vcpu.run_struct
        if exit_reason == K.KVM_EXIT_INTERNAL_ERROR:
            return f" (suberror {run.internal.suberror})"
        if exit_reason == K.KVM_EXIT_FAIL_ENTRY:
            return f" (reason {run.fail_entry.hardware_entry_failure_reason:#x})"
        return ""

    def _take_exception(self, vector: int, regs) -> None:
        """Pop the CPU's exception frame from the CPL0 stack and tell the host."""
        top = self._stack_top_maddr
        cr2 = 0
        if vector == TRAP_page_fault:           # its stub pushed rax and CR2 too
            raw = self.memory.read(top - 8 * 8, 8 * 8)
            cr2, rax, error_code, rip, cs, rflags, rsp, ss = struct.unpack("<8Q", raw)
            regs.rax = rax
        elif vector in VECTORS_WITH_ERROR_CODE:
            raw = self.memory.read(top - 6 * 8, 6 * 8)
            error_code, rip, cs, rflags, rsp, ss = struct.unpack("<6Q", raw)
        else:
            raw = self.memory.read(top - 5 * 8, 5 * 8)
            rip, cs, rflags, rsp, ss = struct.unpack("<5Q", raw)
            error_code = 0
        if cs & 3 != 3:
            raise RuntimeError(f"vector {vector} (error code {error_code:#x}) raised by the hypervisor's own "
                               f"stub at {rip:#x}")
        self.rip, self.cs, self.rflags, self.rsp, self.ss = rip, cs & 0xFFFF, rflags, rsp, ss & 0xFFFF
        self._dirty = True
        host = self.host
        watchpoints = self.watchpoints
        if watchpoints is not None and watchpoints.stepping:
            self.rflags = watchpoints.guest_rflags(rflags)
            if vector != TRAP_debug:
                watchpoints.step_interrupted()
        if vector == TRAP_page_fault and rip == A.SYSCALL_TRAP_VA:
            # kvm_pvm runs `syscall` at CPL3 (EFER.SCE or not): it jumped to LSTAR, which faults.
            # rcx/r11 hold the return RIP and RFLAGS, as the hardware leaves them.
            self.rip, self.rflags = (int(regs.rcx) - 2) & MASK64, self._rflags_from_kvm(int(regs.r11))
            regs.r11 = self.rflags      # as `syscall` saved them, without the hypervisor's TF
            self._count("hypercall")
            self._count("syscall_at_lstar")
            host.on_hypercall(self)
        elif (vector == TRAP_page_fault and self.quirks.m2p_slot_reserved and in_m2p(cr2)
              and not error_code & (PFEC_write_access | PFEC_insn_fetch) and complete_m2p_load(self, cr2)):
            self._count("m2p_load")
            host.on_resume(self)
        elif vector == TRAP_page_fault:
            self._count("page_fault")
            if self.quirks.pfec_spurious_reserved_bit:
                error_code &= ~PFEC_reserved_bit
            host.on_exception(self, vector, error_code, cr2)
        elif vector == TRAP_invalid_op:
            self._invalid_opcode()
        elif vector == TRAP_gp_fault:
            self._general_protection(error_code)
        elif vector in A.USER_GATES:
            # int3 / int 3 / int 4 through their DPL3 gates: RIP is past the instruction.
            self._count("software_interrupt")
            host.on_software_interrupt(self, vector, self._software_int_length(rip, vector))
        elif vector == TRAP_debug and self.watchpoints is not None:
            self._count("exception")
            self.watchpoints.debug_exception()
        else:
            self._count("exception")
            host.on_exception(self, vector, error_code, 0)

    def _code(self, rip: int, length: int) -> bytes:
        return read_guest_virtual(self.memory, self.cr3, rip, length) or b""

    def _software_int_length(self, rip: int, vector: int) -> int:
        data = self._code(rip - 2, 2)
        return 2 if len(data) == 2 and data[0] == _INT_N and data[1] == vector else 1

    def _invalid_opcode(self) -> None:
        code = self._code(self.rip, 2)
        if code == _SYSCALL:
            self._count("hypercall")
            self.host.on_hypercall(self)
        elif len(code) == 2 and code[0] == _INT_N:
            # kvm_pvm was seen to raise #UD for a CPL3 `int N` (hardware: #GP(N*8+2)).
            self._count("software_interrupt")
            self._count("int_n_as_ud")
            self.rip += 2
            self.host.on_software_interrupt(self, code[1], 2)
        else:
            self._count("invalid_opcode")
            self.host.on_invalid_opcode(self)

    def _general_protection(self, error_code: int) -> None:
        if error_code & 2 and error_code & 1 == 0:
            # `int N` through a DPL0 gate: #GP(N*8+2) at the instruction.
            vector = error_code >> 3
            self._count("software_interrupt")
            self.rip += 2
            self.host.on_software_interrupt(self, vector, 2)
            return
        if error_code == 0:
            code = self._code(self.rip, 15)
            if self._port_io(code):
                return
            if code[:2] == _CPUID:
                # CPUID faulting, which the engine keeps on: every plain cpuid reaches the policy.
                self._count("cpuid")
                self.host.on_cpuid(self)
                if not self._deferred and not self._rip_written:
                    self.rip += 2
                return
        self._count("exception")
        self.host.on_exception(self, TRAP_gp_fault, error_code, 0)

    def _port_io(self, code: bytes) -> bool:
        """in/out (not the string forms) at CPL3: the host's I/O rules, as unicorn's hooks."""
        i = 0
        size16 = False
        while i < len(code) and code[i] in (0x66, 0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65):
            size16 |= code[i] == 0x66
            i += 1
        if i < len(code) and 0x40 <= code[i] <= 0x4F:
            i += 1
        if i >= len(code):
            return False
        op = code[i]
        if op in (0xE4, 0xE5, 0xE6, 0xE7):
            if i + 1 >= len(code):
                return False
            port, length = code[i + 1], i + 2
        elif op in (0xEC, 0xED, 0xEE, 0xEF):
            port, length = int(self.regs.rdx) & 0xFFFF, i + 1
        else:
            return False
        size = 1 if op & 1 == 0 else (2 if size16 else 4)
        self._count("port_io")
        rip = self.rip
        if op in (0xE6, 0xE7, 0xEE, 0xEF):
            self.host.on_io(self, port, size, int(self.regs.rax) & ((1 << (8 * size)) - 1))
        else:
            value = self.host.on_io(self, port, size, None)
            if value is not None and not self._deferred:
                mask = (1 << (8 * size)) - 1
                rax = int(self.regs.rax)
                # a 32-bit in zero-extends into rax; 8/16-bit ones merge
                self.regs.rax = (value & mask) if size == 4 else (rax & ~mask & MASK64) | (value & mask)
        if not self._deferred and self.rip == rip:
            self.rip = rip + length
        return True


def index_is_null(selector: int) -> bool:
    return selector & 0xFFFC == 0


def _set_segment(seg, base: int, limit: int, selector: int, type_: int, *, dpl: int, s: int, l: int, db: int,
                 g: int, present: int = 1) -> None:
    seg.base, seg.limit, seg.selector, seg.type = base, limit, selector, type_
    seg.present, seg.dpl, seg.s, seg.l, seg.db, seg.g, seg.avl = present, dpl, s, l, db, g, 0
    seg.unusable = 0 if present else 1

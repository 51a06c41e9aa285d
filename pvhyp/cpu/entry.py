"""The PV entry path: what happens when a PV guest traps into the hypervisor.

`PvVcpu` is the VcpuHost of one CpuEngine.  It turns the engine's raw events
into Xen PV behaviour: hypercalls (raw `syscall` from guest kernel mode, the
iret hypercall handled here), the syscall callback for guest user mode,
exception and software-interrupt bounces through the trap table, privileged
instruction and CPUID emulation, port I/O rules, writable page tables, and
the event upcall on every return to the guest.

Hypercall handlers reach the PV state through `pv_vcpu.pv` and the helpers
below (set_trap_table, register_callback, stack_switch, ...).
"""
from __future__ import annotations

import struct
from typing import Callable

from pvhyp.cpu import xen_layout as L
from pvhyp.cpu.emulate import PrivilegedOps
from pvhyp.cpu.engine import CpuEngine, CpuState, ExitReason
from pvhyp.cpu.traps import Callback, GuestCrash, PvState, TrapBouncer, TrapInfo

HYPERVISOR_IRET = 23
HYPERCALL_SLOT = 32
VECTOR_UD, VECTOR_GP, VECTOR_PF = 6, 13, 14
PFEC_PRESENT, PFEC_WRITE = 0x1, 0x2

# callback_op types (public/callback.h)
CALLBACKTYPE_EVENT, CALLBACKTYPE_FAILSAFE, CALLBACKTYPE_SYSCALL = 0, 1, 2
CALLBACKF_MASK_EVENTS = 1
# set_segment_base (public/arch-x86/xen-x86_64.h)
SEGBASE_FS, SEGBASE_GS_USER, SEGBASE_GS_KERNEL, SEGBASE_GS_USER_SEL = 0, 1, 2, 3

_HYPERCALL_ARGS = ("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9")

HypercallDispatch = Callable[["PvVcpu", int, tuple], int]


def hypercall_page() -> bytes:
    """Contents of a hypercall page: `mov $nr,%eax; syscall; ret` per 32-byte slot.

    The iret slot saves rcx/r11/rax first (Xen's iret_context) and never returns.
    """
    page = bytearray(b"\xcc" * L.PAGE_SIZE)
    for nr in range(L.PAGE_SIZE // HYPERCALL_SLOT):
        if nr == HYPERVISOR_IRET:
            code = b"\x51\x41\x53\x50" + b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05" + b"\x0f\x0b"
        else:
            code = b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05\xc3"
        page[nr * HYPERCALL_SLOT:nr * HYPERCALL_SLOT + len(code)] = code
    return bytes(page)


def initial_state(entry: int, stack: int, start_info_va: int, l4_mfn: int) -> CpuState:
    """Registers of a PV64 vCPU as Xen starts it: rsi = start_info, events masked."""
    state = CpuState(rip=entry, cr3=l4_mfn << 12)
    state.gprs["rsp"] = stack
    state.gprs["rsi"] = start_info_va
    return state


class PvVcpu:
    def __init__(self, memory, layout: L.XenLayout, vcpu_id: int = 0,
                 dispatch: HypercallDispatch | None = None,
                 on_crash: Callable[["PvVcpu", str], None] | None = None,
                 ptwr_emulate: Callable | None = None,
                 on_new_cr3: Callable[[int], bool] | None = None,
                 io_handler: Callable | None = None):
        self.vcpu_id = vcpu_id
        self.dispatch = dispatch
        self.on_crash = on_crash
        self.ptwr_emulate = ptwr_emulate
        self.io_handler = io_handler
        self.vcpu = None                 # the Domain's VCPU, set by the glue
        self.crash_reason: str | None = None
        self.pv = PvState()
        self.engine = CpuEngine(memory, layout, self)
        self.bouncer = TrapBouncer(self.engine, self.pv)
        self.priv = PrivilegedOps(self.engine, self.pv, self.bouncer, vcpu_id, on_new_cr3)
        self.counts = {"hypercall": 0, "exception": 0, "emulated": 0, "event": 0}

    # --- starting and running --------------------------------------------
    def start(self, state: CpuState, vcpu_info_maddr: int = 0) -> None:
        self.pv.kernel_mode = True
        self.pv.kernel_table = state.cr3 >> 12
        self.pv.vcpu_info_maddr = vcpu_info_maddr
        self.engine.load_state(state)

    def run(self, max_insns: int = 0, timeout_us: int = 0) -> ExitReason:
        return self.engine.run(max_insns, timeout_us)

    def kick(self) -> None:
        self.engine.kick()

    def crash(self, reason: str) -> None:
        self.crash_reason = reason
        if self.on_crash is not None:
            self.on_crash(self, reason)
        self.engine.request_exit(ExitReason.GUEST_CRASH)

    # --- state changes asked for by hypercalls ---------------------------------
    def set_trap_table(self, entries) -> None:
        """entries: iterable of (vector, flags, cs, address); address 0 clears."""
        for vector, flags, cs, address in entries:
            if address:
                self.pv.trap_table[vector & 0xFF] = TrapInfo(vector & 0xFF, flags, cs, address)
            else:
                self.pv.trap_table.pop(vector & 0xFF, None)

    def register_callback(self, kind: int, address: int, flags: int = 0) -> bool:
        target = {CALLBACKTYPE_EVENT: "event_callback", CALLBACKTYPE_FAILSAFE: "failsafe_callback",
                  CALLBACKTYPE_SYSCALL: "syscall_callback"}.get(kind)
        if target is None:
            return False
        setattr(self.pv, target, Callback(address, bool(flags & CALLBACKF_MASK_EVENTS)))
        return True

    def stack_switch(self, ss: int, sp: int) -> None:
        self.pv.kernel_ss, self.pv.kernel_sp = ss | 3, sp

    def set_segment_base(self, which: int, value: int) -> bool:
        kernel = self.pv.kernel_mode
        if which == SEGBASE_FS:
            self.engine.write("fs_base", value)
        elif which in (SEGBASE_GS_USER, SEGBASE_GS_KERNEL):
            if (which == SEGBASE_GS_KERNEL) == kernel:
                self.engine.write("gs_base", value)
            else:
                self.pv.inactive_gs_base = value
        elif which == SEGBASE_GS_USER_SEL:
            # Load the user GS selector; its base is the user base again.
            self.engine.write("gs", value & 0xFFFF)
        else:
            return False
        return True

    def set_user_table(self, mfn: int) -> None:
        self.pv.user_table = mfn

    def set_kernel_table(self, mfn: int) -> None:
        self.pv.kernel_table = mfn
        if self.pv.kernel_mode:
            self.engine.set_cr3(mfn << 12)

    # --- VcpuHost ------------------------------------------------------------
    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
            self.bouncer.deliver_pending_events()
        except GuestCrash as err:
            self.crash(str(err))

    def on_resume(self, engine: CpuEngine) -> None:
        self._guarded(lambda: None)

    def on_hypercall(self, engine: CpuEngine) -> None:
        self._guarded(self._hypercall)

    def _hypercall(self) -> None:
        if not self.pv.kernel_mode:
            self.bouncer.bounce_syscall_from_user()
            return
        self.counts["hypercall"] += 1
        nr, rdi, rsi, rdx, r10, r8, r9 = self.engine.read_many(_HYPERCALL_ARGS)
        if nr == HYPERVISOR_IRET:
            self.bouncer.do_iret()
            return
        result = -38 if self.dispatch is None else self.dispatch(self, nr, (rdi, rsi, rdx, r10, r8, r9))
        if self.engine.rip_moved:
            return             # the handler moved the guest (e.g. a bounce); it owns rax too
        # RIP stays at the syscall: unicorn steps past it after the hook,
        # unless an event upcall is about to save it in a frame.
        self.engine.write("rax", result)
        if self.bouncer.events_deliverable():
            self.engine.write("rip", self.engine.read("rip") + 2)

    def on_exception(self, engine: CpuEngine, vector: int, error_code: int, cr2: int) -> None:
        self._guarded(self._exception, vector, error_code, cr2)

    def _exception(self, vector: int, error_code: int, cr2: int) -> None:
        self.counts["exception"] += 1
        if vector == VECTOR_GP and error_code == 0:
            if self.priv.emulate_privileged(self.engine.read("rip")):
                self.counts["emulated"] += 1
                return
        if (vector == VECTOR_PF and self.ptwr_emulate is not None and self.pv.writable_pagetables
                and error_code & (PFEC_PRESENT | PFEC_WRITE) == PFEC_PRESENT | PFEC_WRITE):
            from pvhyp.cpu.ptwr import emulate_pagetable_write
            if emulate_pagetable_write(self, cr2):
                self.counts["emulated"] += 1
                return
        self.bouncer.bounce_exception(vector, error_code, cr2)

    def on_software_interrupt(self, engine: CpuEngine, vector: int, insn_len: int) -> None:
        self._guarded(self.bouncer.bounce_software_interrupt, vector, insn_len)

    def on_invalid_opcode(self, engine: CpuEngine) -> None:
        self._guarded(self._invalid_opcode)

    def _invalid_opcode(self) -> None:
        if self.priv.forced_emulation(self.engine.read("rip")):
            self.counts["emulated"] += 1
            return
        self.bouncer.bounce_exception(VECTOR_UD)

    def on_cpuid(self, engine: CpuEngine) -> None:
        self._guarded(self.priv.cpuid)

    def on_io(self, engine: CpuEngine, port: int, size: int, value: int | None):
        if self.pv.iopl >= (1 if self.pv.kernel_mode else 3):
            if self.io_handler is not None:
                return self.io_handler(self, port, size, value)
            return None if value is not None else (1 << (8 * size)) - 1
        # Denied: #GP at the instruction, once unicorn has finished with it
        # (it would otherwise write the port value into RAX after us).
        rax, rip = engine.read_many(("rax", "rip"))

        def fault() -> None:
            engine.write_many({"rax": rax, "rip": rip})
            self._guarded(self.bouncer.bounce_exception, VECTOR_GP, 0)
        engine.defer_after_stop(fault)
        return None if value is not None else rax

"""What the PV layer needs of a CPU engine, and what an engine tells it.

An engine runs guest code (pvhyp/cpu: unicorn; later KVM) and reports every
guest event that needs the hypervisor as one call on a `VcpuHost`; the host
(pvhyp.pv.entry.PvEntry) answers with Xen PV behaviour through the `Engine`
methods below. Nothing here knows how guest code runs, so every PV mechanism
(hypercall dispatch, trap bouncing, iret, upcalls, emulation, ptwr) is the
same code on every engine; an engine is handed to PvEntry as a factory.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from abi.x86_regs import X86_EFLAGS_IF, X86_EFLAGS_MBS
from abi.xen_x86_64 import FLAT_KERNEL_CS, FLAT_KERNEL_SS

if TYPE_CHECKING:
    from pvhyp.memory import MachineMemory
    from pvhyp.pv.state import PvState
    from pvhyp.pv.xen_area import XenArea

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


class ExitReason(enum.Enum):
    BUDGET = "budget"                     # instruction/time budget used up
    KICKED = "kicked"                     # kick() from another thread
    REQUESTED = "requested"               # the host asked to leave (block, yield, shutdown)
    GUEST_CRASH = "guest_crash"           # the guest made itself unrunnable (Xen: domain_crash)
    HYPERVISOR_ERROR = "hypervisor_error"  # a bug in a host callback: crash the domain, not us


@dataclass
class CpuState:
    """Architectural register state of a vCPU (Xen's cpu_user_regs plus bases)."""
    gprs: dict = field(default_factory=lambda: {name: 0 for name in GPR_NAMES})
    rip: int = 0
    rflags: int = X86_EFLAGS_MBS | X86_EFLAGS_IF
    cs: int = FLAT_KERNEL_CS
    ss: int = FLAT_KERNEL_SS
    ds: int = 0
    es: int = 0
    fs: int = 0
    gs: int = 0
    fs_base: int = 0
    gs_base: int = 0
    cr3: int = 0        # machine address of the active L4
    cr2: int = 0


class VcpuHost(Protocol):
    """What the engine asks of the PV layer.  Each call runs on the vCPU thread
    inside a hook; it reads/writes registers through the engine and may call
    `engine.request_exit()` to leave the run loop."""

    def on_resume(self, engine: "Engine") -> None:
        """Just before guest code runs again after run() was entered (event delivery)."""

    def on_hypercall(self, engine: "Engine") -> None:
        """`syscall` executed; RIP is at the instruction."""

    def on_exception(self, engine: "Engine", vector: int, error_code: int, cr2: int) -> None:
        """A fault/trap raised by the CPU; RIP at the faulting instruction."""

    def on_software_interrupt(self, engine: "Engine", vector: int, insn_len: int) -> None:
        """`int N`/`int3`/`into`; RIP past it.  The gate DPL rule is the host's to apply."""

    def on_invalid_opcode(self, engine: "Engine") -> None:
        """#UD (incl. `ud2` and the forced-emulation prefix); RIP at the instruction."""

    def on_cpuid(self, engine: "Engine") -> None:
        """Plain `cpuid`; set rax/rbx/rcx/rdx, the engine skips the instruction."""

    def on_io(self, engine: "Engine", port: int, size: int, value: int | None) -> int | None:
        """`in` (value None, return the result) or `out`.  Return None from
        `in` when it must fault instead (see defer_after_stop)."""


class Watchpoints(Protocol):
    """Data breakpoints (%dr0-3, %dr7) as the engine implements them."""

    def reload(self) -> None:
        """%dr0-3 or %dr7 changed: watch exactly the enabled data breakpoints."""


class Engine(Protocol):
    """One vCPU's CPU, as the PV layer drives it (pvhyp.cpu.engine.CpuEngine is one)."""

    memory: MachineMemory
    xen_area: XenArea
    window: int                 # this vCPU's window in the hypervisor's area (GDT, entry stack)
    cr3: int                    # machine address of the active L4
    error: BaseException | None     # what a HYPERVISOR_ERROR exit was

    def read(self, name: str) -> int: ...
    def write(self, name: str, value: int) -> None: ...
    def read_many(self, names: tuple[str, ...]) -> tuple[int, ...]: ...
    def write_many(self, values: dict[str, int]) -> None: ...
    @property
    def rip_moved(self) -> bool: ...
    def load_state(self, state: CpuState) -> None: ...
    @property
    def has_state(self) -> bool: ...
    @property
    def entered(self) -> bool: ...
    def set_cr0_ts(self, ts: bool) -> None: ...
    def set_stack_and_code_selectors(self, cs: int, ss: int) -> None: ...
    def load_data_selector(self, seg: str, selector: int) -> bool: ...
    def flush_tlb(self) -> None: ...
    def set_cr3(self, maddr: int) -> None: ...
    def kick(self) -> None: ...
    def request_exit(self, reason: ExitReason = ExitReason.REQUESTED) -> None: ...
    def rewind_after_stop(self, rip: int, action: Callable[[], None]) -> None: ...
    def defer_after_stop(self, action: Callable[[], None]) -> None: ...
    def run(self, max_insns: int = 0, timeout_us: int = 0) -> ExitReason: ...
    def make_watchpoints(self, pv: PvState, raise_debug_exception: Callable[[], None]) -> Watchpoints: ...
    def close(self) -> None: ...


# How PvEntry gets its engine: (machine memory, the hypervisor's area, the host) -> Engine.
EngineFactory = Callable[["MachineMemory", "XenArea", VcpuHost], Engine]

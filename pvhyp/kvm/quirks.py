"""Start-up self-test: does this /dev/kvm run our guests, and with which quirks?

The KVM engine relies on behaviour that differs between KVM kinds (this machine
kind's nested `kvm_pvm`, and VT-x/AMD-V with EPT/NPT). Each is proved here on a
scratch VM running the real stubs and the real KvmEngine on a few CPL3
instructions, as pvhyp/cpu/unicorn_quirks.py proves unicorn's internals:

  required  `syscall` reaches the hypervisor with the guest's RIP: #UD with EFER.SCE off
            (hardware), or kvm_pvm's CPL3 jump to LSTAR faulting on its supervisor page
  required  exceptions reach the vector stubs with the right frame (ud2 -> #UD, hlt -> #GP(0),
            a not-present read -> #PF with CR2), `int3` its DPL3 gate
  required  `int 0x80` reaches the hypervisor (hardware: #GP(0x80*8+2); kvm_pvm: #UD)
  required  registers written in Python are the guest's, and back
  required  a page-table write replayed through the direct map is seen at once
            (and the misaligned rewrite drops a frame's shadows)
  required  a kick from another thread ends KVM_RUN
  measured  shadow_paging: a host write to a PTE stays invisible without the replay
            (kvm_pvm); with EPT/NPT it is seen, and no replay is queued
  measured  pfec_spurious_reserved_bit: #PF error codes carry RSVD on a not-present fault
  measured  m2p_slot_reserved: a user page mapped in L4 slot 256 (Xen's read-only M2P) is not
            present for the guest (kvm_pvm keeps that slot); then a load from it is completed
            by the hypervisor (m2p.py), which is checked too
  measured  debug_registers: a data breakpoint set with KVM_SET_DEBUGREGS raises #DB (kvm_pvm
            ignores the debug registers; KVM_SET_GUEST_DEBUG's breakpoints and single-step too,
            measured once by hand, Dec 2026)
  required  without them, EFLAGS.TF at CPL3 raises #DB after one instruction (watchpoints.py
            single-steps the guest while a data breakpoint is armed)
  measured  cpuid_faulting: KVM's CPUID faulting makes a CPL3 cpuid trap (else plain cpuid
            runs natively and answers with the host's values)

`probe()` returns KvmQuirks or raises KvmUnavailable with one line; the result is
cached per process.
"""
from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field

from abi.x86_pte import _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, PAGE_SIZE
from abi.x86_regs import (
    X86_EFLAGS_IF,
    X86_EFLAGS_MBS,
    X86_EFLAGS_TF,
    PFEC_page_present,
    PFEC_reserved_bit,
    PFEC_user_mode,
    TRAP_debug,
    TRAP_gp_fault,
    TRAP_page_fault,
)
from abi.xen_x86_64 import MACH2PHYS_VIRT_START
from pvhyp.kvm.vm import KVM_DEVICE, KvmUnavailable
from pvhyp.memory import MachineMemory
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import CpuState, ExitReason

PROBE_MEMORY = 8 << 20
_USER_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED
CODE_VA, DATA_VA, STACK_VA = 0x40_0000, 0x40_1000, 0x40_2000
UNMAPPED_VA = 0x7FFF_0000
VALUE_A, VALUE_B = 0x1111, 0x2222
KICK_DELAY = 0.02


@dataclass
class KvmQuirks:
    shadow_paging: bool = True
    pfec_spurious_reserved_bit: bool = False
    int_n_raises_ud: bool = False
    syscall_jumps_to_lstar: bool = False
    m2p_slot_reserved: bool = False
    debug_registers: bool = True
    cpuid_faulting: bool = False
    timings_us: dict = field(default_factory=dict)

    def describe(self) -> str:
        paging = "shadow paging (page-table writes replayed at CPL0)" if self.shadow_paging else "EPT/NPT"
        extra = [name for name in ("pfec_spurious_reserved_bit", "int_n_raises_ud", "syscall_jumps_to_lstar",
                                             "m2p_slot_reserved")
                 if getattr(self, name)]
        cpuid = "cpuid faulting" if self.cpuid_faulting else "plain cpuid native"
        if not self.debug_registers:
            extra.append("no_debug_registers")
        return f"{paging}, {cpuid}" + (f", quirks: {', '.join(extra)}" if extra else "")


# CPL3 snippets, 16 bytes apart at CODE_VA.
_SNIPPETS = {
    "syscall": bytes.fromhex("0f05"),
    "ud2": bytes.fromhex("0f0b"),
    "hlt": bytes.fromhex("f4"),
    "unmapped": bytes.fromhex("488b042500007f7f"[:8]) + struct.pack("<I", UNMAPPED_VA),   # mov rax, [UNMAPPED_VA]
    "int80": bytes.fromhex("cd80"),
    "int3": bytes.fromhex("cc"),
    "cpuid": bytes.fromhex("0fa2"),
    "read_data": bytes.fromhex("488b0425") + struct.pack("<I", DATA_VA) + bytes.fromhex("0f0b"),  # mov rax, [DATA]; ud2
    "loop": bytes.fromhex("ebfe"),
    "add": bytes.fromhex("4889c3" "4883c301" "0f0b"),              # mov rbx, rax; add rbx, 1; ud2
    "write_data": bytes.fromhex("c70425") + struct.pack("<I", DATA_VA) + bytes.fromhex("01000000" "0f0b"),
    "read_m2p": bytes.fromhex("48b8") + struct.pack("<Q", MACH2PHYS_VIRT_START) + bytes.fromhex("488b00" "0f0b"),
}
_OFFSETS = {name: 16 * i for i, name in enumerate(_SNIPPETS)}


class _Recorder:
    """A VcpuHost that records one event and leaves run()."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.events: list[tuple] = []
        self.engine = None

    def _stop(self, engine, *event) -> None:
        self.events.append(event + (engine.read("rip"),))
        engine.request_exit(ExitReason.REQUESTED)

    def on_resume(self, engine) -> None:
        pass

    def on_hypercall(self, engine) -> None:
        self._stop(engine, "hypercall")

    def on_exception(self, engine, vector, error_code, cr2) -> None:
        self._stop(engine, "exception", vector, error_code, cr2)

    def on_software_interrupt(self, engine, vector, insn_len) -> None:
        self._stop(engine, "software_interrupt", vector, insn_len)

    def on_invalid_opcode(self, engine) -> None:
        self._stop(engine, "invalid_opcode")

    def on_cpuid(self, engine) -> None:
        self._stop(engine, "cpuid")

    def on_io(self, engine, port, size, value):
        self._stop(engine, "io", port)
        return 0


class _ProbeDomain:
    domid = 1


class _ProbeVcpu:
    domain = _ProbeDomain()
    vcpu_id = 0


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise KvmUnavailable(f"KVM self-test: {what}")


def _run_probe() -> KvmQuirks:
    from pvhyp.kvm.machine import KvmMachine  # the engine's modules load only once KVM opened
    from pvhyp.kvm.vm import Kvm
    kvm = Kvm()
    memory = MachineMemory(PROBE_MEMORY, "pvhyp-kvm-probe")
    quirks = KvmQuirks()
    next_frame = iter(range(16, PROBE_MEMORY // PAGE_SIZE))

    def alloc() -> int:
        return next(next_frame)
    try:
        xen_area = L.XenArea(memory, alloc)
        machine = KvmMachine(memory, alloc, lambda mfn: 1, quirks, kvm=kvm)
        l4, l3, l2, l1, code, data_a, data_b, stack = (alloc() for _ in range(8))
        for mfn in (l4, l3, l2, l1, code, data_a, data_b, stack):
            memory.write(mfn << 12, bytes(PAGE_SIZE))
        xen_area.install_into_l4(l4)
        machine.area.install_into_l4(l4)
        memory.write_u64(l4 << 12, (l3 << 12) | _USER_TABLE)
        memory.write_u64(l3 << 12, (l2 << 12) | _USER_TABLE)
        memory.write_u64((l2 << 12) + 2 * 8, (l1 << 12) | _USER_TABLE)      # VA 4 MiB
        pte = lambda va: (l1 << 12) + ((va >> 12) & 511) * 8      # noqa: E731
        memory.write_u64(pte(CODE_VA), (code << 12) | _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
        memory.write_u64(pte(DATA_VA), (data_a << 12) | _USER_TABLE)
        memory.write_u64(pte(STACK_VA), (stack << 12) | _USER_TABLE)
        memory.write_u64(data_a << 12, VALUE_A)
        memory.write_u64(data_b << 12, VALUE_B)
        m2p_l3, m2p_l2, m2p_l1 = (alloc() for _ in range(3))
        for mfn in (m2p_l3, m2p_l2, m2p_l1):
            memory.write(mfn << 12, bytes(PAGE_SIZE))
        memory.write_u64((l4 << 12) + 256 * 8, (m2p_l3 << 12) | _USER_TABLE)
        memory.write_u64(m2p_l3 << 12, (m2p_l2 << 12) | _USER_TABLE)
        memory.write_u64(m2p_l2 << 12, (m2p_l1 << 12) | _USER_TABLE)
        memory.write_u64(m2p_l1 << 12, (data_a << 12) | _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
        for name, snippet in _SNIPPETS.items():
            memory.write((code << 12) + _OFFSETS[name], snippet)

        host = _Recorder(_ProbeVcpu())
        engine = machine.make_engine(memory, xen_area, host)
        try:
            state = CpuState(rip=CODE_VA, cr3=l4 << 12)
            state.gprs["rsp"] = STACK_VA + PAGE_SIZE - 64
            engine.load_state(state)

            def run(name: str, **regs) -> tuple:
                engine.write("rip", CODE_VA + _OFFSETS[name])
                for reg, value in regs.items():
                    engine.write(reg, value)
                host.events.clear()
                reason = engine.run(timeout_us=2_000_000)
                _check(reason is not ExitReason.HYPERVISOR_ERROR, f"{name}: {engine.error}")
                _check(len(host.events) == 1, f"{name}: no exit reached the hypervisor ({reason})")
                return host.events[0]

            at = lambda name: CODE_VA + _OFFSETS[name]        # noqa: E731
            _check(run("syscall") == ("hypercall", at("syscall")), "syscall did not reach the hypervisor")
            quirks.syscall_jumps_to_lstar = engine.exits.get("syscall_at_lstar", 0) == 1
            t = time.perf_counter()
            for _ in range(20):
                event = run("ud2")
            quirks.timings_us["trap_round_trip"] = (time.perf_counter() - t) / 20 * 1e6
            _check(event == ("invalid_opcode", at("ud2")), f"ud2 gave {event}")
            event = run("hlt")
            _check(event == ("exception", TRAP_gp_fault, 0, 0, at("hlt")), f"hlt gave {event}")
            event = run("unmapped", rax=0x5A5A)
            _check(event[:2] == ("exception", TRAP_page_fault) and event[3] == UNMAPPED_VA and event[4] == at("unmapped")
                   and engine.read("rax") == 0x5A5A, f"a not-present read gave {event}")
            quirks.pfec_spurious_reserved_bit = bool(event[2] & PFEC_reserved_bit)
            _check(event[2] & ~PFEC_reserved_bit == PFEC_user_mode, f"#PF error code {event[2]:#x}")
            event = run("int80")
            _check(event == ("software_interrupt", 0x80, 2, at("int80") + 2), f"int 0x80 gave {event}")
            quirks.int_n_raises_ud = engine.exits.get("int_n_as_ud", 0) == 1
            event = run("int3")
            _check(event == ("software_interrupt", 3, 1, at("int3") + 1), f"int3 gave {event}")
            event = run("add", rax=0x1234_5678_9ABC)
            _check(engine.read("rbx") == 0x1234_5678_9ABD, "registers did not round-trip through the guest")

            # Xen's read-only M2P slot.
            event = run("read_m2p")
            if event[0] == "exception":
                # kvm_pvm reports it not present, or present with a reserved bit set
                _check(event[1] == TRAP_page_fault and event[3] == MACH2PHYS_VIRT_START
                       and event[2] & ~(PFEC_page_present | PFEC_reserved_bit) == PFEC_user_mode,
                       f"a read of the M2P slot gave {event}")
                quirks.m2p_slot_reserved = True
                _check(run("read_m2p")[0] == "invalid_opcode" and engine.read("rax") == VALUE_A,
                       "a load from the M2P slot is not completed by the hypervisor")
            else:
                _check(engine.read("rax") == VALUE_A, "the M2P slot reads wrong")

            # CPUID faulting, as KVM offers it.
            engine.kvm_vcpu.set_msrs({0x140: 1})
            engine.write("rip", at("cpuid"))
            host.events.clear()
            engine.write("rip", at("cpuid"))
            engine.run(timeout_us=20_000)       # native cpuid runs into the next snippet (hlt)
            quirks.cpuid_faulting = bool(host.events) and host.events[0][0] == "cpuid"
            engine.kvm_vcpu.set_msrs({0x140: 0})

            # Page-table writes from the host.
            _check(run("read_data")[0] == "invalid_opcode" and engine.read("rax") == VALUE_A, "data read")
            memory.write_u64(pte(DATA_VA), (data_b << 12) | _USER_TABLE)
            run("read_data")
            quirks.shadow_paging = engine.read("rax") == VALUE_A
            engine.vm_state.queue_writes([pte(DATA_VA)])
            run("read_data")
            _check(engine.read("rax") == VALUE_B, "a page-table write replayed at CPL0 is not seen")
            memory.write_u64(pte(DATA_VA), (data_a << 12) | _USER_TABLE)
            engine.vm_state.queue_writes([(l1 << 12) + 4])
            run("read_data")
            _check(engine.read("rax") == VALUE_A, "the misaligned rewrite does not drop a table's shadows")

            # Hardware data breakpoints (%dr0 on DATA_VA, write, 4 bytes, enabled).
            debug = engine.kvm_vcpu.get_debugregs()
            debug.db[0], debug.dr7 = DATA_VA, 0x400 | 0x1 | (0xD << 16)
            engine.kvm_vcpu.set_debugregs(debug)
            event = run("write_data")
            quirks.debug_registers = event[0] == "exception" and event[1] == 1
            debug.db[0], debug.dr7 = 0, 0x400
            engine.kvm_vcpu.set_debugregs(debug)
            if not quirks.debug_registers:
                event = run("add", rflags=X86_EFLAGS_MBS | X86_EFLAGS_IF | X86_EFLAGS_TF)
                _check(event == ("exception", TRAP_debug, 0, 0, at("add") + 3),
                       f"EFLAGS.TF at CPL3 gave {event}, not a #DB after one instruction")
                engine.write("rflags", X86_EFLAGS_MBS | X86_EFLAGS_IF)

            # A kick from another thread.
            engine.write("rip", at("loop"))
            kicked = threading.Timer(KICK_DELAY, engine.kick)
            kicked.start()
            t = time.perf_counter()
            reason = engine.run()
            quirks.timings_us["kick"] = (time.perf_counter() - t - KICK_DELAY) * 1e6
            kicked.join()
            _check(reason is ExitReason.KICKED, f"a kick ended the run with {reason}")
            reason = engine.run(timeout_us=5_000)
            _check(reason is ExitReason.BUDGET, f"a time budget ended the run with {reason}")
        finally:
            engine.close()
            machine.close()
    finally:
        kvm.close()
        memory.close()
    return quirks


_cached: KvmQuirks | KvmUnavailable | None = None
_cache_lock = threading.Lock()


def probe() -> KvmQuirks:
    """The quirks of this /dev/kvm (once per process); KvmUnavailable with one line if it cannot run guests."""
    global _cached
    with _cache_lock:
        if _cached is None:
            try:
                _cached = _run_probe()
            except KvmUnavailable as err:
                _cached = err
            except Exception as err:        # anything else from a foreign kernel: not usable, say why
                _cached = KvmUnavailable(f"KVM self-test on {KVM_DEVICE} failed: {type(err).__name__}: {err}")
        if isinstance(_cached, KvmUnavailable):
            raise _cached
        return _cached

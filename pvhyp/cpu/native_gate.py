"""The native gate: safe stops of an uncounted unicorn run, in a few bytes of machine code.

Why machine code: unicorn checks for a stop request after every guest memory
access and resumes at the start of that instruction, so a stop requested from
another thread (`emu_stop`) re-executes an instruction that already stored (an
`incl` counted twice, a won `lock cmpxchg` retried).  A stop requested from a
*block hook* is different: unicorn calls block hooks before the block's first
instruction and checks for a stop right after them (translator_loop emits the
hook before gen_tb_start's exit check), so the run ends at a block boundary
with nothing of the block executed.  A Python block hook would cost a
microsecond per block; these stubs cost a few nanoseconds, and they are called
by unicorn as plain C callbacks on the vCPU's own thread.

`block_hook` (a UC_HOOK_BLOCK over every address) counts blocks, samples one
block in 256 (address and size, for the instruction estimate), and calls uc_emu_stop when
`stop` is set (a kick, from any thread: a plain aligned store) or when
`budget` blocks have run (the engine then looks at its wall-clock budget).

`code_hook` (a UC_HOOK_CODE, only installed while data breakpoints are armed:
it makes every instruction call it) stops the run before an instruction once
`step` counts down to zero: a watchpoint hit sets step = 1 to stop right after
the instruction that hit, 2 to let one more retire (after `mov ss`).

Source: STUB_ASSEMBLY below (GNU as, Intel syntax); STUB_CODE is its assembly,
checked by tests/cpu/test_native_gate.py where `as` is available.
"""
from __future__ import annotations

import ctypes
import mmap

import capstone
from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, x86_const
from unicorn.unicorn_py3.unicorn import uclib

STUB_ASSEMBLY = r"""
    .intel_syntax noprefix
    .text
/* struct gate: 0 stop, 8 budget, 16 emu_stop, 24 blocks, 32 step,
   40 sample_index, 48 samples[32] of (address, size) */
/* void block_hook(uc_engine *uc, uint64_t address, uint32_t size, struct gate *gate) */
block_hook:
    mov rax, [rcx+24]
    inc rax
    mov [rcx+24], rax
    test eax, 0xff
    jnz 2f
    mov rax, [rcx+40]
    and eax, 31
    shl eax, 4
    mov [rcx+48+rax], rsi
    mov r8d, edx
    mov [rcx+56+rax], r8
    inc qword ptr [rcx+40]
2:  cmp qword ptr [rcx], 0
    jne 1f
    dec qword ptr [rcx+8]
    js 1f
    ret
1:  jmp qword ptr [rcx+16]
/* void code_hook(uc_engine *uc, uint64_t address, uint32_t size, struct gate *gate) */
code_hook:
    cmp qword ptr [rcx+32], 0
    jne 3f
    ret
3:  dec qword ptr [rcx+32]
    jz 4f
    ret
4:  jmp qword ptr [rcx+16]
/* gate continues: 560 exit_now, 568 cpu, 576 cpu_loop_exit, 584 in_cb, 592 out_cb, 600 cpuid_cb */
/* uint32_t in_hook(uc, uint32_t port, int size, struct gate *gate) */
in_hook:
    push rbx
    push r12
    sub rsp, 8
    mov rbx, rcx
    mov r12, rdi
    call qword ptr [rbx+584]
    jmp 5f
/* void out_hook(uc, uint32_t port, int size, uint32_t value, struct gate *gate) */
out_hook:
    push rbx
    push r12
    sub rsp, 8
    mov rbx, r8
    mov r12, rdi
    call qword ptr [rbx+592]
    jmp 5f
/* int cpuid_hook(uc, struct gate *gate) */
cpuid_hook:
    push rbx
    push r12
    sub rsp, 8
    mov rbx, rsi
    mov r12, rdi
    call qword ptr [rbx+600]
5:  cmp qword ptr [rbx+560], 0
    jne 6f
    add rsp, 8
    pop r12
    pop rbx
    ret
6:  mov qword ptr [rbx+560], 0
    mov rdi, r12
    call qword ptr [rbx+16]
    mov rdi, [rbx+568]
    call qword ptr [rbx+576]
    ud2
"""
STUB_CODE = bytes.fromhex(
    "488b411848ffc048894118a9ff000000751b488b412883e01fc1e00448897401304189d0"
    "4c8944013848ff412848833900750748ff49087801c3ff611048837920007501c348ff49"
    "207401c3ff61105341544883ec084889cb4989fcff9348020000eb285341544883ec084c"
    "89c34989fcff9350020000eb135341544883ec084889f34989fcff93580200004883bb30"
    "0200000075084883c408415c5bc348c78330020000000000004c89e7ff5310488bbb3802"
    "0000ff93400200000f0b")
STUB_SYMBOLS = {"block_hook": 0x00, "code_hook": 0x3D, "in_hook": 0x4F, "out_hook": 0x64, "cpuid_hook": 0x79}
BLOCK_HOOK_OFFSET, CODE_HOOK_OFFSET = STUB_SYMBOLS["block_hook"], STUB_SYMBOLS["code_hook"]
SAMPLE_SLOTS = 32          # ring of sampled blocks, (address, size) pairs (one block in SAMPLE_EVERY)
SAMPLE_EVERY = 256


class Gate(ctypes.Structure):
    """What the stubs read and write; one per engine, shared with other threads only via `stop`."""
    _fields_ = [("stop", ctypes.c_int64), ("budget", ctypes.c_int64), ("emu_stop", ctypes.c_void_p),
                ("blocks", ctypes.c_uint64), ("step", ctypes.c_int64), ("sample_index", ctypes.c_uint64),
                ("samples", ctypes.c_uint64 * (2 * SAMPLE_SLOTS)),
                ("exit_now", ctypes.c_int64), ("cpu", ctypes.c_void_p), ("cpu_loop_exit", ctypes.c_void_p),
                ("in_callback", ctypes.c_void_p), ("out_callback", ctypes.c_void_p),
                ("cpuid_callback", ctypes.c_void_p)]

# The Python side of the IN/OUT/CPUID stubs: unicorn's hook signatures.
InCallback = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
OutCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                               ctypes.c_void_p)
CpuidCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
SyscallCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


_DISASSEMBLER = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

def _load_stubs() -> tuple[mmap.mmap, int]:
    """The stubs in one executable page, once per process (at import: no lock needed)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page[:len(STUB_CODE)] = STUB_CODE
    return page, ctypes.addressof(ctypes.c_char.from_buffer(page))


_STUB_PAGE, _STUB_ADDRESS = _load_stubs()


_EMU_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
_CPU_LOOP_EXIT = ctypes.cast(uclib.cpu_loop_exit_x86_64, ctypes.c_void_p).value


class NativeGate:
    """The gate and its hooks on one unicorn instance."""

    def __init__(self, uc, set_exit_checks=None):
        self._uc = uc
        # unicorn's per-access exit checks (unicorn_quirks.set_exit_checks): off for
        # speed, on while the per-instruction stub is armed, whose stop needs the
        # check unicorn emits right after a code hook.
        self._set_exit_checks = set_exit_checks or (lambda enabled: None)
        self._set_exit_checks(False)
        self.gate = Gate(stop=0, budget=0, emu_stop=_EMU_STOP)
        self._gate_pointer = ctypes.c_void_p(ctypes.addressof(self.gate))
        self._code_hook: int | None = None
        self._add(UC_HOOK_BLOCK, BLOCK_HOOK_OFFSET)
        self._icounts: dict[tuple[int, int], int] = {}
        self._samples_seen = 0
        self._sampled_blocks = 0
        self._sampled_instructions = 0

    def _add(self, kind: int, offset: int, *instruction: int) -> int:
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(_STUB_ADDRESS + offset),
                                self._gate_pointer, ctypes.c_uint64(1), ctypes.c_uint64(0),
                                *(ctypes.c_int(i) for i in instruction))
        if err != 0:
            raise RuntimeError(f"unicorn refused the native hook (error {err})")
        return handle.value

    # --- stops --------------------------------------------------------------
    def request_stop(self) -> None:
        """From any thread: the run stops before its next block."""
        self.gate.stop = 1

    def clear_stop(self) -> None:
        self.gate.stop = 0

    def set_budget(self, blocks: int) -> None:
        self.gate.budget = blocks

    # --- exits before an instruction (IN, OUT, CPUID) -------------------------
    def add_instruction_exits(self, cpu_state: int, on_in, on_out, on_cpuid) -> None:
        """IN/OUT/CPUID hooks through the stubs: each calls the Python callback and, if
        that called exit_before_instruction(), ends the run with the instruction not
        executed and RIP at it (QEMU's cpu_loop_exit, as its helpers raise faults)."""
        gate = self.gate
        gate.cpu, gate.cpu_loop_exit = cpu_state, _CPU_LOOP_EXIT
        self._callbacks = (InCallback(on_in), OutCallback(on_out), CpuidCallback(on_cpuid))
        gate.in_callback, gate.out_callback, gate.cpuid_callback = (
            ctypes.cast(c, ctypes.c_void_p).value for c in self._callbacks)
        self._add(UC_HOOK_INSN, STUB_SYMBOLS["in_hook"], x86_const.UC_X86_INS_IN)
        self._add(UC_HOOK_INSN, STUB_SYMBOLS["out_hook"], x86_const.UC_X86_INS_OUT)
        self._add(UC_HOOK_INSN, STUB_SYMBOLS["cpuid_hook"], x86_const.UC_X86_INS_CPUID)

    def add_syscall_hook(self, on_syscall) -> None:
        """The SYSCALL hook as a bare ctypes callback: the binding's hook_add wraps it in
        three Python frames, a measurable part of a null hypercall.  `on_syscall(uc, _)`
        must not raise (unicorn's C frames are below it)."""
        self._syscall_callback = SyscallCallback(on_syscall)
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), UC_HOOK_INSN,
                                ctypes.cast(self._syscall_callback, ctypes.c_void_p), None,
                                ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(x86_const.UC_X86_INS_SYSCALL))
        if err != 0:
            raise RuntimeError(f"unicorn refused the syscall hook (error {err})")

    def exit_before_instruction(self) -> None:
        """From an IN/OUT/CPUID callback: leave the run before the instruction retires."""
        self.gate.exit_now = 1

    # --- precise stops inside a block (watchpoints) ---------------------------
    def arm_instruction_stops(self, armed: bool) -> None:
        """Install the per-instruction stub (or remove it); retranslates, so only for rare uses."""
        if armed and self._code_hook is None:
            self._code_hook = self._add(UC_HOOK_CODE, CODE_HOOK_OFFSET)
        elif not armed and self._code_hook is not None:
            # Not Uc.hook_del: the binding only knows the hooks it added itself.
            uclib.uc_hook_del(self._uc._uch, ctypes.c_size_t(self._code_hook))
            self._code_hook = None
        else:
            return
        self.gate.step = 0
        self._set_exit_checks(armed)
        self._uc.ctl_flush_tb()

    def stop_before_instruction(self, after: int = 0) -> None:
        """Stop the run before the next instruction (after `after` more have retired)."""
        self.gate.step = 1 + after

    def cancel_instruction_stop(self) -> None:
        self.gate.step = 0

    # --- statistics -------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return self.gate.blocks

    def absorb_samples(self, read_code, limit: int = 4) -> None:
        """Count the instructions of a few newly sampled blocks.

        `read_code(address, size)` returns the block's bytes (None if unmapped now);
        they are decoded here.  Not unicorn's own TB look-up (uc_ctl
        UC_CTL_TB_REQUEST_CACHE): it translates, and a fault while translating
        outside a run longjmps to a dead frame and kills the process.
        """
        index = self.gate.sample_index
        new = min(index - self._samples_seen, limit)
        self._samples_seen = index
        for slot in range(index - new, index):
            at = 2 * (slot % SAMPLE_SLOTS)
            key = (self.gate.samples[at], self.gate.samples[at + 1])
            icount = self._icounts.get(key)
            if icount is None:
                code = read_code(*key)
                if code is None:
                    continue
                icount = sum(1 for _ in _DISASSEMBLER.disasm_lite(code, key[0]))
                if len(self._icounts) > 65536:
                    self._icounts.clear()
                self._icounts[key] = icount
            self._sampled_blocks += 1
            self._sampled_instructions += icount

    def estimated_instructions(self) -> int | None:
        """Blocks run times the mean instructions of the sampled blocks (None before any sample)."""
        if not self._sampled_blocks:
            return None
        return round(self.gate.blocks * self._sampled_instructions / self._sampled_blocks)

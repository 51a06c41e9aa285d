"""Start-up probe of the unicorn internals the engine depends on.

Unicorn hands exceptions to UC_HOOK_INTR but never exposes the #PF error
code, and QEMU's double-fault bookkeeping (`old_exception`) is not reset when
a hook consumes an exception, so the second fault of a run would arrive as
#DF.  The engine works around both by reading and patching two fields of the
saved CPU context.  Their offsets are private to unicorn, so they are
discovered here by provoking faults with known error codes and diffing the
context, then proven by a burst of back-to-back faults.  Anything unexpected
stops the hypervisor with one line rather than letting guests run on a CPU
that mis-reports faults.

Other unicorn 2.1.4 behaviour the engine is built around (measured here):
- After a SYSCALL hook unicorn adds 2 to whatever RIP is; CPUID/IN/OUT hooks
  cannot move RIP at all (unicorn overwrites it); INTR and invalid-opcode
  hooks can.  The engine holds RIP writes made in those hooks (engine.py).
- A run stopped by its instruction count leaves old_exception = #GP; every
  run is followed by `rearm()`.
- Unicorn checks for a stop request after every guest memory access and
  then restarts at the start of that instruction.  A stop from another
  thread (emu_stop, or emu_start's timeout thread) therefore re-executes an
  instruction that already stored: `incl mem` counts twice, a won `lock
  cmpxchg` is retried and fails.  Block hooks run before a block's first
  instruction with a stop check right after them: the engine's native gate
  (native_gate.py) stops runs there, and other threads only raise its flag.
- Switching a unicorn between counted and uncounted runs flushes its
  translations and touches the previous start address; from CPL3 on a
  supervisor page that is a hidden #PF that turns the next #GP into #DF.
  The engine never counts (nor steps with count=1), and the CPL0 stub runs
  as the first instructions of the first run rather than as a run of its own.
- uc_reg_write(RIP) during a run sets skip_sync_pc_on_exit, which only the
  next emu_start clears; until then IN/OUT/CPUID/memory hooks see a stale
  RIP.  uc_reg_write_batch does not set it: the engine writes RIP with it.
- An unbounded memory hook of any kind (even UC_HOOK_MEM_UNMAPPED) keeps
  every page's TLB entry "not dirty", so each guest store takes the slow path
  with a TB-invalidation check (about 10x on store-heavy loops): the engine
  bounds its unmapped hook to addresses past machine memory.
- An x86 context save/restore is a memcpy of CPUX86State: the engine reads the
  GPRs, RIP, CS and the exception fields in place and writes GPRs there (not RIP).
- uc_ctl(UC_CTL_TB_REQUEST_CACHE) translates; a guest fault while it does,
  outside emu_start, longjmps to a dead frame and kills the process.
- reg_write(CS/SS) loads any selector without checks and never leaves 64-bit
  mode: iret validates descriptors itself, and compat-mode code cannot run.
- Writes to DR0-DR7 have no effect: no hardware breakpoints or watchpoints.
"""
from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import struct
import threading
from dataclasses import dataclass

import unicorn
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc, UcError, x86_const

from abi.x86_pte import _PAGE_PRESENT, _PAGE_RW
from abi.x86_regs import (
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    MSR_EFER,
    X86_CR0_ET,
    X86_CR0_NE,
    X86_CR0_PE,
    X86_CR0_PG,
    X86_CR0_WP,
    X86_CR4_PAE,
    TRAP_gp_fault,
    TRAP_page_fault,
)

REQUIRED_UNICORN_VERSION = "2.1.4"

# Long mode with NX and SYSCALL: the engine runs every guest so, and the probe
# provokes its faults in the same mode so that what it learns holds for the engine.
LONG_MODE_EFER = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE


class UnicornInternalsChanged(RuntimeError):
    """The installed unicorn is not the one whose internals the engine knows."""


@dataclass(frozen=True)
class ContextOffsets:
    """Byte offsets of QEMU's exception bookkeeping inside a uc_context blob."""
    context_size: int
    error_code_offset: int
    is_software_int_offset: int
    old_exception_offset: int
    # unicorn adds this to any RIP a SYSCALL hook writes (the instruction length)
    syscall_rip_bias: int = 2
    # QEMU's regs[16] then eip, contiguous: read all GPRs with one context save
    gpr_block_offset: int = -1
    cs_selector_offset: int = -1
    # where uc_struct keeps QEMU's CPUState (precise exits from IN/OUT/CPUID hooks)
    cpu_state_offset: int = -1
    # uc_struct.no_exit_request (per-access exit checks off)
    no_exit_request_offset: int = -1
    # CPUState.env_ptr (the GPRs read and written in place, without a unicorn call)
    env_pointer_offset: int = -1


# QEMU's register numbering, the order of env->regs[], followed by eip.
GPR_BLOCK_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                   "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
SNAPSHOT_ORDER = GPR_BLOCK_ORDER + ("cs",)


def discover_cs_selector() -> int:
    """Offset of the CS selector (read with the GPRs: a hypercall must see it)."""
    uc, _ = _probe_machine()
    blobs = []
    for selector in (0x1233, 0x2453):
        uc.reg_write(x86_const.UC_X86_REG_CS, selector)
        blobs.append((bytes(uc.context_save()), selector))
    (first, sel1), (second, sel2) = blobs
    found = _u32_offsets(first, sel1) & _u32_offsets(second, sel2)
    if len(found) != 1:
        raise UnicornInternalsChanged(f"CS selector not found in the CPU context (candidates {sorted(found)})")
    return found.pop()


def discover_gpr_block() -> int:
    """Offset in the context blob of the general registers and RIP."""
    uc, _ = _probe_machine()
    magic = {name: 0x5EED_0000_0000_0000 | (i + 1) << 8 | 0x11 for i, name in enumerate(GPR_BLOCK_ORDER)}
    for name, value in magic.items():
        uc.reg_write(getattr(x86_const, f"UC_X86_REG_{name.upper()}"), value)
    blob = bytes(uc.context_save())
    expected = struct.pack(f"<{len(magic)}Q", *magic.values())
    offset = blob.find(expected)
    if offset < 0 or blob.find(expected, offset + 1) >= 0:
        raise UnicornInternalsChanged("general registers not found as one block in the CPU context")
    return offset


class ExceptionBookkeeping:
    """The CPU's own fields, read and written in place in QEMU's CPUX86State.

    unicorn's context save/restore of an x86 CPU is a plain memcpy of that
    structure (no context_save callback for x86), so the context blob's offsets
    (found by discover_offsets) are its offsets shifted by the blob header; the
    structure itself is found through the CPUState (env_of).  Reading and writing
    it directly saves one or two unicorn calls per hook (about 1 us each from Python).
    """

    def __init__(self, uc: Uc, offsets: ContextOffsets):
        env = env_of(uc, offsets)
        shift = offsets.gpr_block_offset      # env->regs[0] sits there in the context blob

        def field(ctype, blob_offset: int):
            return ctype.from_address(env + blob_offset - shift)
        self._error_code = field(ctypes.c_uint32, offsets.error_code_offset)
        self._is_software_int = field(ctypes.c_int32, offsets.is_software_int_offset)
        self._old_exception = field(ctypes.c_int32, offsets.old_exception_offset)
        span = offsets.cs_selector_offset - shift + 4
        self._env = (ctypes.c_char * span).from_address(env)
        self.gprs = (ctypes.c_uint64 * len(GPR_BLOCK_ORDER)).from_address(env)
        self._gpr_block = struct.Struct(f"<{len(GPR_BLOCK_ORDER)}Q")
        self._cs_offset = offsets.cs_selector_offset - shift
        self._cs_selector = struct.Struct("<I")

    def consume(self) -> tuple[int, bool]:
        """Acknowledge the exception being delivered.

        Returns its error code and whether it came from `int N`/`int3`/`into`
        (RIP is then past the instruction and the gate DPL rule applies).
        """
        error_code = self._error_code.value
        is_software_int = self._is_software_int.value == 1
        self._old_exception.value = -1
        return error_code, is_software_int

    def snapshot_gprs(self) -> tuple:
        """All GPRs, RIP and the CS selector (SNAPSHOT_ORDER), read in place."""
        return self._gpr_block.unpack_from(self._env, 0) + \
            (self._cs_selector.unpack_from(self._env, self._cs_offset)[0] & 0xFFFF,)

    def rearm(self) -> None:
        """Clear `old_exception` between runs: a run stopped by its instruction
        count leaves it set to #GP, which would turn the next #GP/#DE into #DF."""
        self._old_exception.value = -1


# --- the probe -------------------------------------------------------------

_PROBE_MEM = 1 << 20
_L4, _L3, _L2, _L1 = 0x1000, 0x2000, 0x3000, 0x4000
_CODE = 0x10000
_RO_PAGE = 0x20000          # mapped read-only
_HOLE = 0x80000             # first of many not-present pages
_NONCANONICAL = 0x8000_0000_0000_0000
# A probe runs a few instructions: unicorn's default translation buffer (about 1 GiB of
# address space per instance) times the start-up's dozen probes made hostd need 8.5 GiB of
# address space before any guest existed. Set before the machine is initialised (mem_map).
_PROBE_TCG_BUFFER = 16 << 20


def _probe_machine() -> tuple[Uc, mmap.mmap]:
    mem = mmap.mmap(-1, _PROBE_MEM)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(_PROBE_TCG_BUFFER)  # type: ignore[attr-defined]  # in 2.1.4, not in its stubs
    uc.mem_map_ptr(0, _PROBE_MEM, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(mem)))
    for table, nxt in ((_L4, _L3), (_L3, _L2), (_L2, _L1)):
        struct.pack_into("<Q", mem, table, nxt | _PAGE_PRESENT | _PAGE_RW)
    for pfn in range(_HOLE >> 12):
        flags = _PAGE_PRESENT if pfn == _RO_PAGE >> 12 else _PAGE_PRESENT | _PAGE_RW
        struct.pack_into("<Q", mem, _L1 + pfn * 8, (pfn << 12) | flags)
    uc.reg_write(x86_const.UC_X86_REG_CR3, _L4)
    uc.reg_write(x86_const.UC_X86_REG_CR4, uc.reg_read(x86_const.UC_X86_REG_CR4) | X86_CR4_PAE)
    uc.msr_write(MSR_EFER, LONG_MODE_EFER)
    uc.reg_write(x86_const.UC_X86_REG_CR0, X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG)
    return uc, mem


def _context_after_fault(code: bytes, regs: dict[int, int]) -> tuple[bytes, bytes, int]:
    """Run `code` (which faults at once) and return the context before and at the fault."""
    uc, mem = _probe_machine()
    mem[_CODE:_CODE + len(code)] = code
    for reg, value in regs.items():
        uc.reg_write(reg, value)
    ctx = uc.context_save()
    before = bytes(ctx)
    seen: list = []

    def on_intr(uc, vector, _):
        uc.context_update(ctx)
        seen.append((bytes(ctx), vector))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(_CODE, _CODE + 0x1000, count=len(code))
    if len(seen) != 1:
        raise UnicornInternalsChanged("probe fault was not delivered to the INTR hook")
    return before, seen[0][0], seen[0][1]


def _u32_offsets(blob: bytes, value: int) -> set[int]:
    want = struct.pack("<I", value)
    return {off for off in range(0, len(blob) - 3, 4) if blob[off:off + 4] == want}


def discover_offsets() -> ContextOffsets:
    """Find the error-code and old_exception offsets by diffing contexts."""
    store = bytes.fromhex("8803")                       # mov [rbx], al
    # A not-present write (error code 2) and a protection write (error code 3)
    # pin the error-code field between them.
    before, not_present, vec1 = _context_after_fault(store, {x86_const.UC_X86_REG_RBX: _HOLE})
    _, read_only, vec2 = _context_after_fault(store, {x86_const.UC_X86_REG_RBX: _RO_PAGE})
    if vec1 != TRAP_page_fault or vec2 != TRAP_page_fault:
        raise UnicornInternalsChanged(f"probe expected #PF, got vectors {vec1} and {vec2}")
    error_code = (_u32_offsets(not_present, 2) & _u32_offsets(read_only, 3)) - _u32_offsets(before, 2)
    old_exception = _u32_offsets(not_present, TRAP_page_fault) & _u32_offsets(read_only, TRAP_page_fault)
    old_exception &= {off for off in range(0, len(before) - 3, 4) if before[off:off + 4] == b"\xff\xff\xff\xff"}
    # `int $0x40` and `int3` mark the exception as software-generated.
    _, int_n, vec3 = _context_after_fault(bytes.fromhex("cd40"), {})
    _, int3, vec4 = _context_after_fault(bytes.fromhex("cc"), {})
    if (vec3, vec4) != (0x40, 3):
        raise UnicornInternalsChanged(f"probe expected vectors 0x40 and 3, got {vec3} and {vec4}")
    is_int = (_u32_offsets(int_n, 1) & _u32_offsets(int3, 1)) & _u32_offsets(not_present, 0)
    if len(error_code) != 1 or len(old_exception) != 1:
        raise UnicornInternalsChanged(
            f"could not locate exception fields in the context (candidates {sorted(error_code)}, {sorted(old_exception)})")
    ec_off, old_off = error_code.pop(), old_exception.pop()
    is_int = {off for off in is_int if ec_off < off < old_off}
    if len(is_int) != 1:
        raise UnicornInternalsChanged(f"could not locate the software-interrupt flag (candidates {sorted(is_int)})")
    return ContextOffsets(len(before), ec_off, is_int.pop(), old_off)


def self_test(offsets: ContextOffsets, rounds: int = 50) -> None:
    """Alternate #PF and #GP `rounds` times each; every one must be exact."""
    # top: mov [rbx], al ; mov al, [rcx] ; add rbx, 0x1000 ; dec edx ; jnz top
    loop = bytes.fromhex("8803" "8a01" "4881c300100000" "ffca" "75f1")
    uc, mem = _probe_machine()
    mem[_CODE:_CODE + len(loop)] = loop
    uc.reg_write(x86_const.UC_X86_REG_RBX, _HOLE)
    uc.reg_write(x86_const.UC_X86_REG_RCX, _NONCANONICAL)
    uc.reg_write(x86_const.UC_X86_REG_RDX, rounds)
    bookkeeping = ExceptionBookkeeping(uc, offsets)
    seen: list[tuple[int, int, int, int]] = []

    def on_intr(uc, vector, _):
        error_code, software = bookkeeping.consume()
        rip = uc.reg_read(x86_const.UC_X86_REG_RIP)
        cr2 = uc.reg_read(x86_const.UC_X86_REG_CR2) if vector == TRAP_page_fault else 0
        seen.append((vector + 0x100 * software, error_code, cr2, rip))
        uc.reg_write(x86_const.UC_X86_REG_RIP, rip + 2)

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(_CODE, _CODE + len(loop), count=rounds * 6)
    expected = []
    for i in range(rounds):
        expected.append((TRAP_page_fault, 2, _HOLE + i * 0x1000, _CODE))
        expected.append((TRAP_gp_fault, 0, 0, _CODE + 2))
    if seen != expected:
        first_bad = next((i for i, (a, b) in enumerate(zip(seen, expected)) if a != b), min(len(seen), len(expected)))
        got = seen[first_bad] if first_bad < len(seen) else None
        raise UnicornInternalsChanged(
            f"fault #{first_bad} delivered as {got}, expected {expected[first_bad]}")


def measure_syscall_rip_bias() -> int:
    """Where execution resumes, relative to the RIP a SYSCALL hook wrote."""
    from unicorn import UC_HOOK_CODE, UC_HOOK_INSN
    uc, mem = _probe_machine()
    code = bytes.fromhex("0f05" + "90" * 14)
    mem[_CODE:_CODE + len(code)] = code
    target = _CODE + 8
    executed: list[int] = []
    uc.hook_add(UC_HOOK_INSN, lambda uc, _: uc.reg_write(x86_const.UC_X86_REG_RIP, target), None, 1, 0,
                x86_const.UC_X86_INS_SYSCALL)
    uc.hook_add(UC_HOOK_CODE, lambda uc, address, size, _: executed.append(address))
    uc.emu_start(_CODE, _CODE + len(code), count=2)
    if len(executed) < 2 or not 0 <= executed[1] - target <= 2:
        raise UnicornInternalsChanged(f"SYSCALL hook RIP write resumed at {executed[1:2]}, target {target:#x}")
    return executed[1] - target


# unicorn's internals are the same for every Hypervisor in the process: the probe's
# result is process-wide, and so is the lock that guards it.
_cached: ContextOffsets | None = None
_cache_lock = threading.Lock()


def verified_offsets() -> ContextOffsets:
    """The verified context offsets, probed once per process."""
    global _cached
    with _cache_lock:
        if _cached is None:
            if unicorn.__version__ != REQUIRED_UNICORN_VERSION:
                raise UnicornInternalsChanged(
                    f"pvhyp needs unicorn {REQUIRED_UNICORN_VERSION}, found {unicorn.__version__}")
            try:
                offsets = discover_offsets()
                offsets = dataclasses.replace(offsets, syscall_rip_bias=measure_syscall_rip_bias(),
                                              gpr_block_offset=discover_gpr_block(),
                                              cs_selector_offset=discover_cs_selector(),
                                              cpu_state_offset=discover_cpu_state_offset(),
                                              no_exit_request_offset=discover_no_exit_request_offset())
                offsets = dataclasses.replace(
                    offsets, env_pointer_offset=discover_env_pointer_offset(offsets.cpu_state_offset))
                self_test(offsets)
            except UcError as err:
                raise UnicornInternalsChanged(f"unicorn probe failed: {err}") from err
            _cached = offsets
        return _cached


def require_supported_unicorn() -> ContextOffsets:
    """For entry points: exit with one clear line when the CPU engine cannot run."""
    try:
        return verified_offsets()
    except UnicornInternalsChanged as err:
        raise SystemExit(f"pvhyp: CPU engine unavailable: {err}") from None


# --- the CPU state behind a unicorn handle (for precise exits) ------------------
#
# A hook that must end the run *before* its instruction retires (a refused `in`,
# a faulting `cpuid`) cannot use uc_emu_stop: the stop lands after the next guest
# memory access.  QEMU's own helpers raise exceptions with cpu_loop_exit(cpu),
# which unwinds to the execution loop with the instruction not executed; unicorn
# syncs RIP to the instruction before calling IN/OUT/CPUID hooks, so the run then
# ends exactly there.  cpu_loop_exit needs QEMU's CPUState, which unicorn keeps in
# its private uc_struct right after a run of about 39 function pointers
# (query ... context_restore).  Found here by that shape, and proven by finding the
# registers just written through the public API inside the CPUState it names.

_MIN_FUNCTION_POINTERS = 30
_UC_STRUCT_SCAN = 2048
_CPU_STATE_SCAN = 8192
_ENV_DISTANCE = 0x20000


def _libunicorn_range() -> tuple[int, int]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libunicorn" in line:
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                ranges.append((low, high))
    if not ranges:
        raise UnicornInternalsChanged("libunicorn is not mapped in this process")
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _read_process_memory(address: int, size: int) -> bytes | None:
    """Bytes of this process at `address`, or None if unmapped (never a crash)."""
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        return os.pread(fd, size, address)
    except OSError:
        return None
    finally:
        os.close(fd)


def discover_cpu_state_offset() -> int:
    """Offset of `CPUState *cpu` in unicorn's uc_struct (see above)."""
    uc, _ = _probe_machine()
    handle = ctypes.cast(uc._uch, ctypes.c_void_p).value or 0
    raw = _read_process_memory(handle, _UC_STRUCT_SCAN)
    if raw is None:
        raise UnicornInternalsChanged("cannot read the unicorn handle")
    low, high = _libunicorn_range()
    words = struct.unpack(f"<{len(raw) // 8}Q", raw)
    code_pointers = 0
    for index, word in enumerate(words):
        if word == 0 or low <= word < high:
            code_pointers += word != 0
            continue
        if code_pointers >= _MIN_FUNCTION_POINTERS and _names_this_cpu(uc, word):
            return index * 8
        code_pointers = 0
    raise UnicornInternalsChanged("the CPU state pointer was not found in the unicorn handle")


def _names_this_cpu(uc: Uc, candidate: int) -> bool:
    return _env_pointer_offset(uc, candidate) is not None


def _env_pointer_offset(uc: Uc, cpu: int) -> int | None:
    """Where in the CPUState `cpu` its env_ptr is: the pointer, close after it, to
    the registers just written through the public API (None: not this CPU's state)."""
    magic = (0x5EED_C0DE_0000_0001, 0x5EED_C0DE_0000_0002)
    uc.reg_write(x86_const.UC_X86_REG_RAX, magic[0])
    uc.reg_write(x86_const.UC_X86_REG_RCX, magic[1])
    raw = _read_process_memory(cpu, _CPU_STATE_SCAN)
    if raw is None:
        return None
    wanted = struct.pack("<2Q", *magic)
    for index, (env,) in enumerate(struct.iter_unpack("<Q", raw)):
        if cpu < env < cpu + _ENV_DISTANCE and _read_process_memory(env, 16) == wanted:
            return index * 8
    return None


def discover_env_pointer_offset(cpu_state_offset: int) -> int:
    """Offset of env_ptr in QEMU's CPUState: the guest registers live at *env_ptr."""
    uc, _ = _probe_machine()
    found = _env_pointer_offset(uc, cpu_state_of(uc, cpu_state_offset))
    if found is None:
        raise UnicornInternalsChanged("the CPU's register state was not found behind its CPUState")
    return found


def env_of(uc: Uc, offsets: "ContextOffsets") -> int:
    """Address of `uc`'s CPUX86State: env->regs[] first, as in the context blob at gpr_block_offset."""
    cpu = cpu_state_of(uc, offsets.cpu_state_offset)
    return ctypes.c_uint64.from_address(cpu + offsets.env_pointer_offset).value


def cpu_state_of(uc: Uc, offset: int) -> int:
    """The CPUState pointer of `uc` (offset from discover_cpu_state_offset)."""
    handle = ctypes.cast(uc._uch, ctypes.c_void_p).value or 0
    return ctypes.c_uint64.from_address(handle + offset).value


# --- unicorn's per-access exit checks -----------------------------------------
#
# Unicorn emits a helper call after every guest load and store that checks for a
# stop request (check_exit_request); TCG spills and reloads the guest registers
# around it, which measured ~10% of a Debian boot's CPU and 2-3x on store-heavy
# loops.  It exists so that a stop from another thread lands soon, and that stop
# is exactly the re-execution bug (see the module docstring): the engine never
# stops a run from another thread, so it turns the checks off with the flag
# unicorn keeps for ARM IT blocks, `uc_struct.no_exit_request` (read when code is
# translated).  Blocks still check at their start (gen_tb_start), where the
# native gate stops runs.  The flag sits in a recognisable run of fields:
# target_page_size (u32 4096), target_page_align (u32 4095), two host page sizes
# (u64 4096), icache line size, context mode, context size, next_pc (u64), then
# the bools hook_insert, first_tb, no_exit_request, init_done (1).
_NO_EXIT_REQUEST_AFTER_PAGE_SIZE = 50


def discover_no_exit_request_offset() -> int:
    uc, _ = _probe_machine()
    handle = ctypes.cast(uc._uch, ctypes.c_void_p).value or 0
    raw = _read_process_memory(handle, 16384)
    if raw is None:
        raise UnicornInternalsChanged("cannot read the unicorn handle")
    anchor = struct.Struct("<IIQQ")
    candidates = [x for x in range(0, len(raw) - 64, 8)
                  if anchor.unpack_from(raw, x) == (4096, 4095, 4096, 4096)
                  and raw[x + _NO_EXIT_REQUEST_AFTER_PAGE_SIZE] == 0
                  and raw[x + _NO_EXIT_REQUEST_AFTER_PAGE_SIZE + 1] == 1]
    if len(candidates) != 1:
        raise UnicornInternalsChanged(f"no_exit_request not found in the unicorn handle ({len(candidates)} candidates)")
    offset = candidates[0] + _NO_EXIT_REQUEST_AFTER_PAGE_SIZE
    _prove_no_exit_request(offset)
    return offset


def set_exit_checks(uc: Uc, offset: int, enabled: bool) -> None:
    """Per-access exit checks on or off for code translated from now on."""
    handle = ctypes.cast(uc._uch, ctypes.c_void_p).value or 0
    ctypes.c_uint8.from_address(handle + offset).value = 0 if enabled else 1


def _prove_no_exit_request(offset: int) -> None:
    """A stop asked for by a store hook mid-block: with the checks it lands right after
    the store (RIP back at it); without them the block runs to its end."""
    from unicorn import UC_HOOK_MEM_WRITE
    # mov [rbx], al ; inc rcx ; inc rcx ; nop
    code = bytes.fromhex("8803" "48ffc1" "48ffc1" "90")
    outcomes = []
    for checks in (True, False):
        uc, mem = _probe_machine()
        mem[_CODE:_CODE + len(code)] = code
        set_exit_checks(uc, offset, checks)
        uc.reg_write(x86_const.UC_X86_REG_RBX, _CODE + 0x1000)
        uc.reg_write(x86_const.UC_X86_REG_RCX, 0)
        uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, *_: uc.emu_stop())
        uc.emu_start(_CODE, _CODE + len(code))
        outcomes.append((uc.reg_read(x86_const.UC_X86_REG_RCX), uc.reg_read(x86_const.UC_X86_REG_RIP) - _CODE))
    if outcomes != [(0, 0), (2, len(code))]:
        raise UnicornInternalsChanged(f"no_exit_request did not behave as expected: {outcomes}")

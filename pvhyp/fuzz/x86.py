"""The x86 target: a hostile PV domain runs generated instruction sequences on the CPU engine.

A world of kind "x86cpu" is the "x86" attacker (real, pinned page tables; pfn
N at virtual N << 12) with a real vCPU: `hv.cpu.cpu_for` gives it the PvEntry
every x86 guest gets (real hypercall dispatch, trap bouncing, privileged
instruction emulation, ptwr, iret). `GuestKernel` writes a small kernel into
it: a trap handler for every exception vector and callbacks for events and
syscalls, each of which returns through the iret hypercall to the next code
slot after the one that trapped, so one step runs every gadget it holds.

An x86 step (`Step.op` "x86:<family>") is a page of 128-byte code slots,
each one gadget: register loads (mov r64, imm64) from the world's pools
followed by the instruction under attack, then nops into the next slot; the
first empty slot spins (jmp .) until the instruction budget ends the step.
Families: privileged instructions (cpuid, rdmsr/wrmsr, in/out, cli/sti, mov
cr/dr, hlt, lgdt, ltr, swapgs, ...), memory accesses (its own page tables
through ptwr, read-only and hypervisor addresses, non-canonical ones),
segment loads (mov to ss/ds/es/fs/gs, far returns, iretq frames), trap
raisers (int N, int3, ud2, wild jumps, hostile stacks), hypercalls by
`syscall` (the iret hypercall with a hostile frame among them) and raw
bytes. The step's page is staged as data and each step starts, from fresh
registers (set_user_regs, the path VCPUOP_initialise takes), at a loader in
the guest that copies it into the code page (see `loader_code`).

The oracle adds to the hypercall fuzzer's: the run ends with a reason Xen
could have (budget, kick, request, or the guest crashing itself, which ends
the world as Xen's domain_crash does), never with a hypervisor error or an
exception out of the engine; no ring-0 instruction is emulated for guest
user mode; the guest never runs with RPL 0 code; the hypervisor's own text,
IDT, TSS and reserved GDT are unchanged.
"""
from __future__ import annotations

import hashlib
import random
import struct
import traceback

from abi.sched import SHUTDOWN_crash
from abi.x86_pte import pte_mfn
from abi.x86_regs import MSR_EFER
from abi.xen import DOMID_SELF, HYPERCALL_NUMBERS, MMUEXT_NEW_USER_BASEPTR, VMASST_TYPE_writable_pagetables
from abi.xen_x86_64 import FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_USER_CS, FLAT_USER_SS, MACH2PHYS_VIRT_START
from pvhyp.fuzz.world import PTE_FLAG_CHOICES, World
from pvhyp.hypercall_table import HypercallContext
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import ExitReason
from pvhyp.pv.state import set_trap_entry

MASK64 = (1 << 64) - 1
HANDLER_PFN, CODE_PFN, STACK_PFNS, STAGING_PFN = 8, 9, (10, 11), 12
HANDLER_VA, CODE_VA, STAGING_VA = HANDLER_PFN << 12, CODE_PFN << 12, STAGING_PFN << 12
STACK_TOP = (STACK_PFNS[-1] + 1) << 12
SLOT = 128                      # one gadget per slot; a trap returns to the next slot
SLOTS = 4096 // SLOT
STEP_INSNS = 3000               # instruction budget of one step
STEP_TIMEOUT_US = 200_000       # and a wall-clock bound, should a hook loop
X86_NR = -1                     # Step.nr of an x86 step (not a hypercall)
WORLD_KIND = "x86cpu"
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
HYPERVISOR_IRET = HYPERCALL_NUMBERS["iret"]

# Register numbers in instruction encodings.
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11 = range(12)
NOP, JMP_SELF = b"\x90", b"\xeb\xfe"


def mov_imm(reg: int, value: int) -> bytes:
    """mov r64, imm64."""
    return bytes([0x48 | (reg >> 3), 0xB8 | (reg & 7)]) + (value & MASK64).to_bytes(8, "little")


def push_imm(value: int) -> bytes:
    """The value on the stack through rax (push imm is only 32 bits)."""
    return mov_imm(RAX, value) + b"\x50"


def _iret_hypercall() -> bytes:
    return mov_imm(RAX, HYPERVISOR_IRET) + b"\x0f\x05\x0f\x0b"       # syscall; ud2 should it return


def handler_code(extra_words: int, next_slot: bool) -> bytes:
    """A trap/callback entry: drop the error code, move the saved rip to the next slot, iret.

    Xen's 64-bit bounce frame is rcx, r11, [extra words], rip, cs, rflags, rsp, ss, the
    extra words being the error code of some exceptions or the failsafe callback's ds-gs;
    HYPERVISOR_iret wants rax, r11, rcx, flags, rip, cs, rflags, rsp, ss. A rip
    outside the code page (a wild jump) resumes at its last slot, which spins:
    that ends the step instead of iret-ing somewhere that crashes the domain.
    """
    code = b"\x59\x41\x5b"                                   # pop rcx; pop r11
    if extra_words:
        code += b"\x48\x83\xc4" + bytes([8 * extra_words])   # add rsp, 8 * extra_words
    if next_slot:
        code += (b"\x48\x8b\x04\x24"                         # mov rax, [rsp]
                 + b"\x48\x89\xc2"                           # mov rdx, rax
                 + b"\x48\x81\xea" + CODE_VA.to_bytes(4, "little")       # sub rdx, CODE_VA
                 + b"\x48\x81\xfa" + (4096).to_bytes(4, "little")        # cmp rdx, 4096
                 + b"\x72\x0c"                                # jb in_page
                 + mov_imm(RAX, CODE_VA + 4096 - SLOT)         # the last slot
                 + b"\xeb\x09"                                # jmp store
                 + b"\x48\x0d" + (SLOT - 1).to_bytes(4, "little")   # in_page: or rax, SLOT-1
                 + b"\x48\xff\xc0"                           # inc rax
                 + b"\x48\x89\x04\x24")                      # store: mov [rsp], rax
    # A sane kernel stack again for the next bounce from user mode (a gadget's
    # stack_switch may have left a hostile one; Xen would crash on the next trap).
    code += (b"\xb8" + HYPERCALL_NUMBERS["stack_switch"].to_bytes(4, "little")      # mov eax, nr
             + b"\xbf" + FLAT_KERNEL_SS.to_bytes(4, "little")                       # mov edi, ss
             + mov_imm(RSI, STACK_TOP - 8) + b"\x0f\x05")                           # mov rsi, sp; syscall
    code += b"\x6a\x00\x51\x41\x53\x50"                      # push 0 (flags); push rcx; push r11; push rax
    return code + _iret_hypercall()


# Where the handlers live in HANDLER_PFN: 104 bytes each, vector v at v * 104; callbacks after.
HANDLER_STRIDE = 104
EVENT_CALLBACK_VA = HANDLER_VA + 32 * HANDLER_STRIDE
FAILSAFE_CALLBACK_VA = EVENT_CALLBACK_VA + HANDLER_STRIDE
SYSCALL_CALLBACK_VA = FAILSAFE_CALLBACK_VA + HANDLER_STRIDE
SOFT_INT_VA = SYSCALL_CALLBACK_VA + HANDLER_STRIDE
LOADER_VA = SOFT_INT_VA + HANDLER_STRIDE


def loader_code() -> bytes:
    """Where every step starts: the guest copies the step's code from the staging page.

    unicorn keeps translations of code it ran and does not see stores made through
    the host mapping of machine memory, but it does see the guest's own stores
    (self-modifying code): so the fuzzer stages the code as data and the guest
    copies it into place, and only the code page's stale translations go.
    """
    return (mov_imm(RSI, STAGING_VA) + mov_imm(RDI, CODE_VA) + mov_imm(RCX, 4096 // 8)
            + b"\xfc\xf3\x48\xa5"                            # cld; rep movsq
            + mov_imm(RAX, CODE_VA) + b"\xff\xe0")              # jmp rax


def handler_page() -> bytes:
    page = bytearray(JMP_SELF * 2048)
    for vector in range(32):
        code = handler_code(int(vector in VECTORS_WITH_ERROR_CODE), next_slot=True)
        assert len(code) <= HANDLER_STRIDE
        page[vector * HANDLER_STRIDE:vector * HANDLER_STRIDE + len(code)] = code
    assert LOADER_VA + len(loader_code()) <= HANDLER_VA + 4096
    for va, code in ((EVENT_CALLBACK_VA, handler_code(0, next_slot=False)),
                     (FAILSAFE_CALLBACK_VA, handler_code(4, next_slot=True)),     # + ds, es, fs, gs
                     (SYSCALL_CALLBACK_VA, handler_code(0, next_slot=True)),
                     (SOFT_INT_VA, handler_code(0, next_slot=True)),
                     (LOADER_VA, loader_code())):
        offset = va - HANDLER_VA
        page[offset:offset + len(code)] = code
    return bytes(page)


# --- value pools --------------------------------------------------------------------

# Model-specific registers a PV kernel might touch, and the hypervisor's own (0x4000_0000: the
# hypercall-page MSR Xen offers); values with no name here are raw numbers on purpose.
_MSRS = (MSR_EFER, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0100, 0xC000_0101,
         0xC000_0102, 0xC000_0103, 0x10, 0x1B, 0x3A, 0x48, 0x49, 0x8B, 0x10A, 0x174, 0x175, 0x176,
         0x1D9, 0x277, 0x2FF, 0x4000_0000, 0x4000_0001, 0x4000_0200, 0xC001_0015, 0xFFFF_FFFF, 0)
_PORTS = (0x20, 0x21, 0x40, 0x43, 0x60, 0x61, 0x64, 0x70, 0x71, 0x80, 0xCF8, 0xCFC, 0x3F8, 0x3FD, 0xFFFF, 0)
_SELECTORS = (0, 1, 3, FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_USER_CS, FLAT_USER_SS, 0xE008, 0xE010,
              0xE019, 0xE023, 0xE02B, 0xE033, 0xE040, 0xE043, 0x08, 0x0B, 0x10, 0x13, 0x1B, 0x23, 0x2B,
              0x33, 0x4, 0x7, 0xFFF8, 0xFFFF, 0xFFFC)


def _table_vas(world: World) -> list[int]:
    return [pfn << 12 for pfn in world.table_pfns]


def hostile_address(world: World, rng: random.Random, width: int = 8) -> int:
    """An address a hostile kernel would store to or load from."""
    roll = rng.random()
    align = ~(width - 1) & MASK64
    if roll < 0.3 and world.table_pfns:       # its own page tables: ptwr, or a #PF to bounce
        return (rng.choice(_table_vas(world)) + rng.randrange(512) * 8) & align
    if roll < 0.55:
        return world.pointer(rng, width)
    if roll < 0.65:
        return rng.choice((HANDLER_VA, CODE_VA, STACK_TOP - 8, CODE_VA + rng.randrange(4096) & align))
    return rng.choice((
        0, 8, 0xFFF, 1 << 47, (1 << 47) - 8, 0xFFFF_8000_0000_0000, MACH2PHYS_VIRT_START,
        MACH2PHYS_VIRT_START + 8 * rng.randrange(4096), L.ENTRY_STUB_VA, L.IDT_VA, L.TSS_VA,
        L.PERDOMAIN_VIRT_START, L.XEN_VIRT_START, 0xFFFF_FFFF_FFFF_F000, 0x8000_0000_0000_0000,
        len(world.attacker.p2m) << 12, (len(world.attacker.p2m) + 4) << 12, rng.getrandbits(64) & align))


def hostile_value(world: World, rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.35:
        kind = rng.choice(["own_mfn", "own_mfn", "own_pt_mfn", "foreign_mfn", "xen_mfn", "bad_mfn"])
        return ((rng.choice(world.pools[kind]) << 12) | rng.choice(PTE_FLAG_CHOICES)) & MASK64
    if roll < 0.55:
        return hostile_address(world, rng)
    if roll < 0.75:
        return rng.choice((0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 63, MASK64))
    return rng.getrandbits(64)


# --- gadgets -------------------------------------------------------------------------

_PRIVILEGED = (
    b"\x0f\xa2",                    # cpuid
    b"\x0f\x0b\x78\x65\x6e\x0f\xa2",  # ud2; "xen"; cpuid: the forced-emulation prefix
    b"\x0f\x32", b"\x0f\x30",       # rdmsr, wrmsr
    b"\xfa", b"\xfb", b"\xf4",      # cli, sti, hlt
    b"\x0f\x06", b"\x0f\x08", b"\x0f\x09",   # clts, invd, wbinvd
    b"\x0f\x31", b"\x0f\x01\xf9", b"\x0f\x33",  # rdtsc, rdtscp, rdpmc
    b"\x0f\x01\xf8", b"\x0f\x01\xd0", b"\x0f\x01\xd1",  # swapgs, xgetbv, xsetbv
    b"\x0f\x01\x13", b"\x0f\x01\x1b", b"\x0f\x01\x03", b"\x0f\x01\x0b",   # lgdt/lidt/sgdt/sidt [rbx]
    b"\x0f\x01\xf0", b"\x0f\x01\xe0", b"\x0f\x01\x3b",   # lmsw ax, smsw eax, invlpg [rbx]
    b"\x0f\x00\xd0", b"\x0f\x00\xd8", b"\x0f\x00\xc0", b"\x0f\x00\xc8",   # lldt, ltr, sldt, str
    b"\x0f\x00\xe0", b"\x0f\x00\xe8", b"\x0f\x02\xc3", b"\x0f\x03\xc3",   # verr, verw, lar, lsl
    b"\x0f\x01\xc8", b"\x0f\x01\xc9", b"\x0f\x01\xc1", b"\x0f\xaa",       # monitor, mwait, vmcall, rsm
    b"\x48\x0f\x07", b"\x0f\x34", b"\x0f\x35",   # sysretq, sysenter, sysexit
    b"\x9c\x58", b"\x50\x9d",       # pushf; pop rax / push rax; popf (IOPL, IF, TF, AC, NT)
    b"\xe4\x40", b"\xe5\x60", b"\xe6\x80", b"\xe7\x70",   # in/out imm8
    b"\xec", b"\xed", b"\x66\xed", b"\xee", b"\xef", b"\x66\xef",   # in/out dx
    b"\x6c", b"\x6d", b"\x6e", b"\x6f", b"\xf3\x6c", b"\xf3\x6f",   # ins/outs (rdi/rsi point somewhere)
    b"\x0f\xae\x03", b"\x0f\x28\x03", b"\xdb\xe3", b"\xd9\xee",     # fxsave [rbx], movaps, fninit, fldz (#NM)
    b"\x0f\xae\xf0", b"\x0f\xc7\xf0",   # mfence, rdrand eax
)


def _mov_cr_dr(rng: random.Random) -> bytes:
    to = rng.random() < 0.5
    if rng.random() < 0.6:
        cr = rng.choice((0, 2, 3, 4, 8, 1, 5))
        return bytes([0x0F, 0x22 if to else 0x20, 0xC0 | cr << 3 | RAX])
    dr = rng.randrange(8)
    return bytes([0x0F, 0x23 if to else 0x21, 0xC0 | dr << 3 | RAX])


def gadget_privileged(world: World, rng: random.Random) -> bytes:
    setup = mov_imm(RCX, rng.choice(_MSRS) if rng.random() < 0.8 else rng.getrandbits(32))
    setup += mov_imm(RDX, rng.choice(_PORTS) if rng.random() < 0.6 else hostile_value(world, rng))
    setup += mov_imm(RAX, hostile_value(world, rng))
    setup += mov_imm(RBX, hostile_address(world, rng))
    if rng.random() < 0.3:
        setup += mov_imm(RDI, hostile_address(world, rng)) + mov_imm(RSI, hostile_address(world, rng))
    insn = _mov_cr_dr(rng) if rng.random() < 0.25 else rng.choice(_PRIVILEGED)
    return setup + insn


_MEMORY_OPS = (
    b"\x48\x89\x03", b"\x89\x03", b"\x66\x89\x03", b"\x88\x03",   # mov [rbx], rax/eax/ax/al
    b"\x48\x8b\x03", b"\x8b\x03",                                  # mov rax, [rbx]
    b"\xf0\x48\x0f\xb1\x0b", b"\xf0\x0f\xb1\x0b",                  # lock cmpxchg [rbx], rcx
    b"\x48\x87\x03", b"\xf0\x48\x0f\xc1\x03", b"\x48\x01\x03",     # xchg, lock xadd, add [rbx], rax
    b"\xf0\x48\x0f\xab\x03", b"\x48\x0f\xc3\x03",                  # lock bts [rbx], rax; movnti
    b"\xf3\x48\xab", b"\xf3\xa4",                                  # rep stosq, rep movsb
    b"\xff\x13", b"\xff\x23",                                      # call [rbx], jmp [rbx]
)


def gadget_memory(world: World, rng: random.Random) -> bytes:
    width = rng.choice((8, 8, 4, 2, 1))
    address = hostile_address(world, rng, width)
    setup = mov_imm(RBX, address) + mov_imm(RAX, hostile_value(world, rng))
    setup += mov_imm(RCX, rng.choice((1, 2, 8, 64, 512)) if rng.random() < 0.3 else hostile_value(world, rng))
    setup += mov_imm(RDI, address) + mov_imm(RSI, hostile_address(world, rng))
    return setup + rng.choice(_MEMORY_OPS)


_SEGMENT_LOADS = (b"\x8e\xd0", b"\x8e\xd8", b"\x8e\xc0", b"\x8e\xe0", b"\x8e\xe8",   # mov ss/ds/es/fs/gs, ax
                  b"\x50\x0f\xa1", b"\x50\x0f\xa9",                                 # push rax; pop fs / pop gs
                  b"\x0f\xb2\x03", b"\x0f\xb4\x03", b"\x0f\xb5\x03",               # lss/lfs/lgs eax, [rbx]
                  b"\xff\x2b", b"\xff\x1b")                                         # jmp far / call far [rbx]


def gadget_segment(world: World, rng: random.Random) -> bytes:
    selector = rng.choice(_SELECTORS) if rng.random() < 0.85 else rng.getrandbits(16)
    if rng.random() < 0.35:          # a far return or iretq through a hostile frame
        rip = _mostly(rng, CODE_VA + SLOT * rng.randrange(SLOTS), hostile_address(world, rng))
        rsp = _mostly(rng, STACK_TOP - 64, hostile_address(world, rng))
        rflags = rng.choice((0x2, 0x202, 0x3202, 0x200, 0x40202, 0x20202, 0x4202, 0x102, rng.getrandbits(32)))
        ss = rng.choice(_SELECTORS)
        if rng.random() < 0.5:
            return (push_imm(ss) + push_imm(rsp) + push_imm(rflags) + push_imm(selector) + push_imm(rip)
                    + b"\x48\xcf")                                   # iretq
        return push_imm(selector) + push_imm(rip) + b"\x48\xcb"      # lretq
    address = world.pointer(rng, 16)
    setup = mov_imm(RAX, selector) + mov_imm(RBX, address)
    return setup + rng.choice(_SEGMENT_LOADS)


def _mostly(rng: random.Random, usual: int, hostile: int) -> int:
    """A stack or return address that works, now and then one that does not.

    A kernel stack or iret target Xen cannot use crashes the domain (as it
    should), which ends the world: kept rare, so runs spend their time inside
    a live domain rather than building new ones.
    """
    return usual if rng.random() < 0.9 else hostile


def gadget_trap(world: World, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        vector = rng.choice((0x80, 0x82, 0x20, 0x21, 3, 1, 4, 13, 14, 8, 2, 18, 255, rng.randrange(256)))
        return bytes([0xCD, vector])                                 # int N
    if roll < 0.55:
        return rng.choice((b"\xcc", b"\xf1", b"\xce", b"\x0f\x0b", b"\x0f\xff"))   # int3, int1, into, ud2, ud0
    if roll < 0.97:                   # divide by zero, a wild jump
        return rng.choice((b"\x31\xc9\x48\xf7\xf1",                                 # xor ecx,ecx; div rcx
                           mov_imm(RAX, hostile_address(world, rng)) + b"\xff\xe0"))   # jmp rax
    # A hostile kernel stack: the next bounce has nowhere good to go.
    return (mov_imm(RSP, rng.choice((hostile_address(world, rng), 0, 1 << 47, L.ENTRY_STUB_VA,
                                     STACK_TOP - 8)))
            + rng.choice((b"\xcc", b"\x50", b"\x0f\x0b", b"\xcd\x80", b"\x0f\x05")))


def gadget_hypercall(world: World, rng: random.Random) -> bytes:
    if rng.random() < 0.3:           # the iret hypercall on a hostile frame
        frame = [hostile_value(world, rng) if rng.random() < 0.03 else v for v in (
            _mostly(rng, CODE_VA + SLOT * rng.randrange(SLOTS), hostile_address(world, rng)),   # rip
            rng.choice(_SELECTORS),                                                              # cs
            rng.choice((0x202, 0x2, 0x3202, 0x200, 0x100, rng.getrandbits(32))),                # rflags
            _mostly(rng, STACK_TOP - 64, hostile_address(world, rng)),                           # rsp
            rng.choice(_SELECTORS))]                                                             # ss
        flags = rng.choice((0, 0, 1 << 8, 0xFFFF_FFFF, rng.getrandbits(64)))                      # VGCF_in_syscall...
        regs = [hostile_value(world, rng) for _ in range(3)]                                     # rax, r11, rcx
        code = b"".join(push_imm(v) for v in reversed(regs + [flags] + frame))
        return code + mov_imm(RAX, HYPERVISOR_IRET) + b"\x0f\x05"
    nr = rng.choice(list(HYPERCALL_NUMBERS.values())) if rng.random() < 0.9 else rng.choice((64, 1 << 32, MASK64))
    code = mov_imm(RAX, nr)
    for reg in (RDI, RSI, RDX, R10, R8):
        roll = rng.random()
        value = (world.pointer(rng, 64) if roll < 0.4 else rng.randrange(0, 48) if roll < 0.7
                 else hostile_value(world, rng))
        code += mov_imm(reg, value)
    return code + b"\x0f\x05"


def gadget_raw(world: World, rng: random.Random) -> bytes:
    return mov_imm(RBX, world.pointer(rng, 64)) + rng.randbytes(rng.randrange(1, 16))


FAMILIES = {"privileged": (gadget_privileged, 3), "memory": (gadget_memory, 3), "segment": (gadget_segment, 2),
            "trap": (gadget_trap, 2), "hypercall": (gadget_hypercall, 3), "raw": (gadget_raw, 1)}


def generate_step(world: World, rng: random.Random):
    """A page of gadgets, mostly of one family; Step.args = [rip, rsp] to start from."""
    from pvhyp.fuzz.ops import Step
    family = rng.choices(list(FAMILIES), weights=[w for _, w in FAMILIES.values()])[0]
    page = bytearray(JMP_SELF * (4096 // 2))
    for slot in range(rng.randrange(1, 9)):
        name = family if rng.random() < 0.75 else rng.choice(list(FAMILIES))
        # Padded with nops, a gadget that does not trap runs on into the next slot's.
        code = FAMILIES[name][0](world, rng)[:SLOT].ljust(SLOT, NOP)
        page[slot * SLOT:(slot + 1) * SLOT] = code
    return Step(f"x86:{family}", X86_NR, [LOADER_VA, STACK_TOP - 256], [(STAGING_VA, bytes(page))])


# --- the guest kernel and one step's run ------------------------------------------------

class GuestKernel:
    """The attacker's vCPU and the little kernel around the gadgets."""

    def __init__(self, world: World, rng: random.Random):
        self.world = world
        hv, domain = world.hv, world.attacker
        self.vcpu = vcpu = domain.vcpus[0]
        self.cpu = hv.cpu.cpu_for(vcpu)
        world.write(HANDLER_VA, handler_page())
        pv = self.cpu.pv
        for vector in range(32):
            # DPL 0 (int N from the guest kernel must still reach them) or 3, sometimes event-masking.
            flags = rng.choice((0, 3, 3 | 4, 0 | 4))
            set_trap_entry(pv, vector, flags, FLAT_KERNEL_CS, HANDLER_VA + vector * HANDLER_STRIDE)
        for vector in (0x80, 0x82, 0x20, 0x21, 0xFF):
            set_trap_entry(pv, vector, rng.choice((0, 3)), FLAT_KERNEL_CS, SOFT_INT_VA)
        ctx_call = world.hv.hypercalls.dispatch
        ctx = HypercallContext(vcpu)
        ctx_call(ctx, HYPERCALL_NUMBERS["set_callbacks"], [EVENT_CALLBACK_VA, FAILSAFE_CALLBACK_VA,
                                                           SYSCALL_CALLBACK_VA, 0, 0, 0])
        ctx_call(ctx, HYPERCALL_NUMBERS["stack_switch"], [FLAT_KERNEL_SS, STACK_TOP - 8, 0, 0, 0, 0])
        # User mode shares the kernel's L4 (so an iret to user mode is possible at all).
        world.write(0, struct.pack("<IIQQ", MMUEXT_NEW_USER_BASEPTR, 0, vcpu.guest_table, 0))
        ctx_call(ctx, HYPERCALL_NUMBERS["mmuext_op"], [0, 1, 0, DOMID_SELF, 0, 0])
        if rng.random() < 0.8:
            domain.vm_assist |= 1 << VMASST_TYPE_writable_pagetables
        self.hypervisor_digest = self.hypervisor_text_digest()
        self.violations: list[str] = []
        self._watch_emulation()

    def _watch_emulation(self) -> None:
        """Observe PrivilegedOps: Xen emulates no ring-0 instruction for guest user mode.

        Xen's emulator runs user mode at CPL3, so only cli/sti (with the virtual
        IOPL allowing them) may be completed there; everything else is the #GP.
        """
        ops = self.cpu.priv
        emulate = ops.emulate_privileged

        def watched(rip: int) -> bool:
            kernel = ops.pv.kernel_mode
            done = emulate(rip)
            if done and not kernel:
                code = self.world.read(rip, 16).lstrip(bytes(range(0x40, 0x50)) + b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")
                if code[:1] not in (b"\xfa", b"\xfb"):
                    self.violations.append(f"ring-0 instruction emulated for guest user mode: "
                                           f"{code[:3].hex()} at {rip:#x}")
            return done
        ops.emulate_privileged = watched

    def run_step(self, step) -> tuple[str, Exception | None]:
        """Run one x86 step: (what the run ended with, an exception that escaped, if any)."""
        world, cpu, pv = self.world, self.cpu, self.cpu.pv
        domain = world.attacker
        if domain.is_shut_down or domain.is_dying:
            return "domain_dead", None
        for addr, data in step.writes:
            world.write(addr, data)
            if addr < CODE_VA + 4096 and addr + len(data) > CODE_VA:
                # Code stored from outside the guest (a hand-made step; generated ones go
                # through loader_code): unicorn would run its old translation. Reloading the
                # watchpoints is the engine interface's call that drops them all.
                cpu.watchpoints.reload()
        rip, rsp = (list(step.args) + [LOADER_VA, STACK_TOP - 256])[:2]
        kernel = pv.kernel_mode
        try:
            cpu.set_user_regs({"rip": rip, "rsp": rsp, "rflags": 0x202,
                               "cs": FLAT_KERNEL_CS if kernel else FLAT_USER_CS,
                               "ss": FLAT_KERNEL_SS if kernel else FLAT_USER_SS})
            reason = cpu.run(max_insns=STEP_INSNS, timeout_us=STEP_TIMEOUT_US)
        except Exception as e:       # nothing may escape the engine's run
            return "exception", e
        if reason is ExitReason.HYPERVISOR_ERROR:
            error = cpu.engine.error
            return "hypervisor_error", error if isinstance(error, Exception) else RuntimeError(repr(error))
        if reason is ExitReason.GUEST_CRASH:
            domain.shutdown(SHUTDOWN_crash)         # what the vCPU runner does: Xen's domain_crash
        return reason.value, None

    def check_after_step(self) -> str | None:
        """The CPU-level invariants: guest code never at RPL 0, hypervisor text unchanged."""
        if self.violations:
            problem, self.violations = self.violations[0], []
            return problem
        engine = self.cpu.engine
        if engine.entered and not (self.world.attacker.is_shut_down or self.world.attacker.is_dying):
            cs, rip = engine.read_many(("cs", "rip"))
            # The one place the vCPU runs at CPL0 is the hypervisor's entry stub: a run that
            # ends (a kick) after entering through it but before its iretq resumes there.
            if cs & 3 != 3 and rip != L.ENTRY_STUB_VA:
                return f"guest left running with cs={cs:#x} (RPL {cs & 3}): hypervisor privilege"
        if self.hypervisor_text_digest() != self.hypervisor_digest:
            return "the hypervisor's text, IDT, TSS or reserved GDT changed"
        return None

    def hypervisor_text_digest(self) -> bytes:
        """The entry stub, IDT and TSS pages and the reserved GDT frame (walked from hv.xen_l4_slots)."""
        memory = self.world.hv.memory
        h = hashlib.blake2b(digest_size=16)
        frames = [self.cpu.engine.xen_area.reserved_gdt_mfn]
        for va in (L.ENTRY_STUB_VA, L.IDT_VA, L.TSS_VA):
            entry = self.world.hv.xen_l4_slots[(va >> 39) & 511]
            for shift in (30, 21, 12):
                table = pte_mfn(entry)
                entry = memory.read_u64((table << 12) + ((va >> shift) & 511) * 8)
            frames.append(pte_mfn(entry))
        for mfn in frames:
            h.update(memory.read(mfn << 12, 4096))
        return h.digest()

    def close(self) -> None:
        cpu = self.vcpu.arch
        if cpu is not None:
            self.vcpu.arch = None
            cpu.engine.close()


def describe(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"

"""A tiny PV "domain builder" for CPU-engine tests.

Assembles a test kernel with the machine's `as`/`ld`, loads it flat into
machine memory, builds 4-level page tables for it (kernel and user L4s with
the hypervisor slots installed) and wraps it in a PvEntry whose hypercalls go
to a recording dispatcher.  Test kernels share PRELUDE: trap stubs for every
vector that report (vector, error code, rip, cr2) with hypercall HC_LOG and
return through the iret hypercall, skipping `skip_len` bytes.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field

from abi.x86_pte import PTE_FRAME_MASK
from pvhyp.cpu.engine import CpuEngine
from pvhyp.domain import Domain
from pvhyp.memory import MachineMemory
from pvhyp.pv import state as pv_state
from pvhyp.pv import xen_area as L
from pvhyp.pv.entry import PvEntry, initial_state

PAGE = 4096
MEMORY_BYTES = 32 << 20
HV_FIRST_MFN, HV_FRAMES = 0x100, 0x100
GUEST_FIRST_MFN = 0x400             # guest pfn N lives in mfn GUEST_FIRST_MFN + N
GUEST_PAGES = 0x400                 # 4 MiB of guest memory, identity-mapped at VA 0
TABLES_FIRST_MFN = 0x900
KERNEL_BASE = 0x100000
KERNEL_STACK_TOP = 0x300000
USER_STACK_TOP = 0x310000
VCPU_INFO_VA = 0x320000
RO_PAGE_VA = 0x330000
HOLE_VA = 0x1000_0000               # nothing mapped from here on
HC_LOG, HC_EXIT = 40, 41

PRELUDE = r"""
.set HC_LOG, 40
.set HC_EXIT, 41
.set HYPERVISOR_IRET, 23
.set VCPU_INFO_CR2, 0x320010

.macro HYPERCALL nr
    mov $\nr, %eax
    syscall
.endm

/* The stack holds rip, cs, rflags, rsp, ss: return there through Xen. */
.macro XEN_IRET flags=0
    pushq $\flags
    pushq %rcx
    pushq %r11
    pushq %rax
    mov $HYPERVISOR_IRET, %eax
    syscall
    ud2
.endm

.macro TRAP vec, has_ec
.globl trap_\vec
trap_\vec:
    pop %rcx
    pop %r11
    .if \has_ec == 0
    pushq $-1
    .endif
    pushq $\vec
    jmp common_trap
.endm

.text
.globl _start
_start:
    jmp main

common_trap:            /* vector, error code, rip, cs, rflags, rsp, ss */
    mov %rax, saved_rax(%rip)
    mov (%rsp), %rdi
    mov 8(%rsp), %rsi
    mov 16(%rsp), %rdx
    mov VCPU_INFO_CR2, %r10
    mov 24(%rsp), %r8
    HYPERCALL HC_LOG
    mov skip_len(%rip), %rdi
    add %rdi, 16(%rsp)
    add $16, %rsp
    mov saved_rax(%rip), %rax
    XEN_IRET

TRAP 0, 0
TRAP 3, 0
TRAP 6, 0
TRAP 13, 1
TRAP 14, 1
TRAP 32, 0
TRAP 33, 0

.data
.globl skip_len
skip_len: .quad 0
saved_rax: .quad 0
.text
"""

TRAP_VECTORS = (0, 3, 6, 13, 14, 32, 33)


def assemble(source: str, base: int = KERNEL_BASE) -> tuple[bytes, dict[str, int]]:
    """Flat image at `base` and its symbol table; cached by source hash."""
    full = PRELUDE + source
    key = hashlib.sha256(f"{base:x}\n{full}".encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), f"pvhyp-cpu-tests-{os.getuid()}")
    os.makedirs(cache, exist_ok=True)
    stem = os.path.join(cache, key)
    if not os.path.exists(stem + ".bin"):
        with open(stem + ".S", "w") as f:
            f.write(full)
        subprocess.run(["as", "--64", "-o", stem + ".o", stem + ".S"], check=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-static", "-nostdlib", f"-Ttext={base:#x}",
                        "-Tdata", f"{base + 0x10000:#x}", "-e", "_start", "-o", stem + ".elf", stem + ".o"], check=True)
        syms = subprocess.run(["nm", stem + ".elf"], check=True, capture_output=True, text=True).stdout
        subprocess.run(["objcopy", "-O", "binary", "--pad-to", f"{base + 0x11000:#x}",
                        stem + ".elf", stem + ".bin.tmp"], check=True)
        with open(stem + ".syms", "w") as f:
            f.write(syms)
        os.replace(stem + ".bin.tmp", stem + ".bin")
    with open(stem + ".bin", "rb") as f:
        image = f.read()
    symbols = {}
    with open(stem + ".syms") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                symbols[parts[2]] = int(parts[0], 16)
    return image, symbols


@dataclass
class Recorder:
    """The test dispatcher: HC_LOG appends its arguments, HC_EXIT stops the vCPU."""
    log: list = field(default_factory=list)
    exited: bool = False
    others: list = field(default_factory=list)

    def __call__(self, entry: PvEntry, nr: int, args: tuple) -> int:
        if nr == HC_LOG:
            self.log.append(args[:5])
            return 0
        if nr == HC_EXIT:
            self.exited = True
            entry.engine.request_exit()
            return 0
        self.others.append((nr, args))
        return -38


class GuestMachine:
    def __init__(self, memory: MachineMemory | None = None):
        self.memory = memory or MachineMemory(MEMORY_BYTES)
        m2p_frames = (self.memory.nr_frames * 8 + PAGE - 1) // PAGE
        m2p = list(range(HV_FIRST_MFN, HV_FIRST_MFN + m2p_frames))
        for i in range(self.memory.nr_frames):
            self.memory.write_u64((m2p[0] << 12) + i * 8, i - GUEST_FIRST_MFN if i >= GUEST_FIRST_MFN else (1 << 64) - 1)
        self.xen_area = L.XenArea(self.memory, L.frames_from_range(HV_FIRST_MFN + m2p_frames, HV_FRAMES - m2p_frames), m2p)
        self._next_table = TABLES_FIRST_MFN

    def new_table(self) -> int:
        mfn = self._next_table
        self._next_table += 1
        self.memory.scrub(mfn)
        return mfn

    def map(self, l4: int, va: int, mfn: int, flags: int) -> None:
        table = l4
        for shift in (39, 30, 21):
            slot = (table << 12) + ((va >> shift) & 0x1FF) * 8
            entry = self.memory.read_u64(slot)
            if not entry & 1:
                entry = (self.new_table() << 12) | 0x7
                self.memory.write_u64(slot, entry)
            table = (entry & PTE_FRAME_MASK) >> 12
        self.memory.write_u64((table << 12) + ((va >> 12) & 0x1FF) * 8, (mfn << 12) | flags)

    def guest_address_space(self) -> int:
        """An L4 mapping the guest's 4 MiB at VA 0 (user, RW) plus the hypervisor slots."""
        l4 = self.new_table()
        self.xen_area.install_into_l4(l4)
        for pfn in range(GUEST_PAGES):
            va = pfn << 12
            flags = 0x5 if va == RO_PAGE_VA else 0x7
            self.map(l4, va, GUEST_FIRST_MFN + pfn, flags)
        return l4

    def guest_maddr(self, va: int) -> int:
        return ((GUEST_FIRST_MFN << 12) + va)

    def load_kernel(self, source: str, with_user_table: bool = False):
        image, symbols = assemble(source)
        self.memory.write(self.guest_maddr(KERNEL_BASE), image)
        recorder = Recorder()
        domain = Domain(None, domid=1, max_vcpus=1, max_pages=GUEST_PAGES)
        vcpu = domain.vcpus[0]
        vcpu.pv = pv = pv_state.PvState(vcpu)
        vcpu.vcpu_info_maddr = self.guest_maddr(VCPU_INFO_VA)
        self.memory.buf[vcpu.vcpu_info_maddr + 1] = 1          # events masked, as Xen starts a vCPU
        cpu = PvEntry(self.memory, self.xen_area, vcpu, CpuEngine, dispatch=recorder)
        vcpu.arch = cpu
        cpu.start(initial_state(symbols["_start"], KERNEL_STACK_TOP, 0, self.guest_address_space()))
        for vec in TRAP_VECTORS:
            pv_state.set_trap_entry(pv, vec, 0, L.FLAT_KERNEL_CS, symbols[f"trap_{vec}"])
        pv.kernel_sp = KERNEL_STACK_TOP - 0x8000
        if with_user_table:
            vcpu.guest_table_user = self.guest_address_space()
        return cpu, recorder, symbols


def load_into_domain(hv, domain, source: str, nr_pages: int = 0x200):
    """Populate `domain`, map pfn N at VA N<<12 (plus the hypervisor slots) and load
    the assembled test kernel; vCPU 0 gets its initial registers. Returns the symbols."""
    image, symbols = assemble(source)
    p2m = hv.populate(domain, nr_pages)
    tables = iter(hv.populate(domain, 8))
    mem = hv.memory
    l4 = next(tables)
    for slot, entry in hv.xen_l4_slots.items():
        mem.write_u64((l4 << 12) + slot * 8, entry)
    made = {}
    for pfn, mfn in enumerate(p2m):
        table = l4
        for shift in (39, 30, 21):
            index = (pfn << 12 >> shift) & 0x1FF
            if (table, index) not in made:
                made[(table, index)] = next(tables)
                mem.write_u64((table << 12) + index * 8, (made[(table, index)] << 12) | 0x7)
            table = made[(table, index)]
        mem.write_u64((table << 12) + (pfn & 0x1FF) * 8, (mfn << 12) | 0x7)
    for offset in range(0, len(image), PAGE):
        chunk = image[offset:offset + PAGE]
        mem.write(p2m[(KERNEL_BASE + offset) >> 12] << 12, chunk)
    vcpu = domain.vcpus[0]
    vcpu.guest_table = l4
    vcpu.kernel_mode = True
    vcpu.pv.initial_user_regs = {"rip": symbols["_start"], "rsp": nr_pages << 12, "rflags": 0x202,
                                 "cs": L.FLAT_KERNEL_CS, "ss": L.FLAT_KERNEL_SS}
    vcpu.online = True
    return symbols, p2m

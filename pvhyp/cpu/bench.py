"""Micro-benchmarks of the CPU engine (`pvhyp bench hypercall` uses these).

Both run a minimal PV kernel built here from raw machine code, so they need
no assembler: a loop of hypercalls answered by a no-op dispatcher, and a
register/memory compute loop with a known instruction count.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import time

from abi.x86_pte import _PAGE_NX, l1_table_offset, l2_table_offset, l3_table_offset, l4_table_offset
from pvhyp.cpu.engine import CpuEngine
from pvhyp.domain import Domain
from pvhyp.memory import MachineMemory
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import ExitReason
from pvhyp.pv.entry import PvEntry, initial_state
from pvhyp.pv.state import PvState

_MEMORY = 16 << 20
_HV_FIRST, _HV_COUNT = 0x10, 0x80
_TABLES_FIRST = 0x100
_CODE_MFN, _DATA_MFN, _STACK_MFN = 0x200, 0x201, 0x202
_CODE_VA, _DATA_VA, _STACK_VA = 0x400000, 0x401000, 0x402000
_EXIT_HYPERCALL = 63

# rcx = iterations; loop: mov $NR,%eax; syscall; dec %rcx; jnz loop; exit.
_HYPERCALL_LOOP = bytes.fromhex("b800000000" "0f05" "48ffc9" "75f4")
# rcx = iterations; loop: push %rcx; mov $0xc0000100,%ecx; rdmsr; pop %rcx; dec %rcx; jnz loop; exit.
_RDMSR_LOOP = bytes.fromhex("51" "b9000100c0" "0f32" "59" "48ffc9" "75f2")
# loop: add %rax,%rbx; mov %rbx,(%rdi); xor (%rdi),%rdx; dec %rcx; jnz loop  (5 instructions)
_COMPUTE_LOOP = bytes.fromhex("4801c3" "48891f" "483317" "48ffc9" "75f2")
_EXIT = b"\xb8" + struct.pack("<I", _EXIT_HYPERCALL) + bytes.fromhex("0f05" "ebfe")


class _Machine:
    def __init__(self, code: bytes):
        self.memory = MachineMemory(_MEMORY)
        frames = iter(range(_TABLES_FIRST, _TABLES_FIRST + 16))
        xen_area = L.XenArea(self.memory, L.frames_from_range(_HV_FIRST, _HV_COUNT), ())
        l4 = next(frames)
        xen_area.install_into_l4(l4)
        tables = {}
        for va, mfn in ((_CODE_VA, _CODE_MFN), (_DATA_VA, _DATA_MFN), (_STACK_VA, _STACK_MFN)):
            table = l4
            for table_offset in (l4_table_offset, l3_table_offset, l2_table_offset):
                index = table_offset(va)
                key = (table, index)
                if key not in tables:
                    tables[key] = next(frames)
                    self.memory.write_u64((table << 12) + index * 8, (tables[key] << 12) | 0x7)
                table = tables[key]
            # Data and stack no-execute, as any kernel maps them: unicorn sends every
            # store to an executable page down its self-modifying-code check.
            no_execute = 0 if va == _CODE_VA else _PAGE_NX
            self.memory.write_u64((table << 12) + l1_table_offset(va) * 8, (mfn << 12) | 0x7 | no_execute)
        self.memory.write(_CODE_MFN << 12, code + _EXIT)
        # No hypervisor: the engine alone is measured, and nothing on this path reaches domain.hv.
        vcpu = Domain(None, domid=1, max_vcpus=1, max_pages=0).vcpus[0]  # type: ignore[arg-type]
        vcpu.pv = PvState(vcpu)
        self.entry = vcpu.arch = PvEntry(self.memory, xen_area, vcpu, CpuEngine, dispatch=self._dispatch)
        self.state = initial_state(_CODE_VA, _STACK_VA + 0x1000, 0, l4)

    def _dispatch(self, entry, nr, args):
        if nr == _EXIT_HYPERCALL:
            entry.engine.request_exit()
        return 0

    def run(self, rcx: int, rdi: int = _DATA_VA) -> float:
        self.state.gprs.update(rcx=rcx, rdi=rdi)
        self.entry.start(self.state)
        start, cpu_start = time.perf_counter(), time.process_time()
        reason = self.entry.run()
        elapsed = time.perf_counter() - start
        # CPU time of this process (only this thread runs): on a shared machine the
        # wall time also counts the time other processes held the core.
        self.cpu_seconds = time.process_time() - cpu_start
        if reason is not ExitReason.REQUESTED:
            raise RuntimeError(f"benchmark kernel stopped with {reason}: {self.entry.engine.error or self.entry.crash_reason}")
        return elapsed


def null_hypercall_roundtrip_us(iterations: int = 20_000) -> float:
    """Microseconds per guest `syscall` -> dispatcher -> back to guest."""
    return null_hypercall_roundtrip(iterations)[0]


def null_hypercall_roundtrip(iterations: int = 20_000) -> tuple[float, float]:
    """(wall, CPU) microseconds per guest `syscall` -> dispatcher -> back to guest."""
    machine = _Machine(_HYPERCALL_LOOP)
    machine.run(100)                           # warm the translation cache
    wall = machine.run(iterations)
    return wall / iterations * 1e6, machine.cpu_seconds / iterations * 1e6


def emulated_rdmsr_roundtrip_us(iterations: int = 5_000) -> float:
    """Microseconds per #GP -> privileged-instruction emulation -> back to guest."""
    machine = _Machine(_RDMSR_LOOP)
    machine.run(100)
    return machine.run(iterations) / iterations * 1e6


def compute_mips(iterations: int = 20_000_000) -> float:
    """Guest instructions per second (millions) for a register/memory loop, uncounted."""
    return compute_rates(iterations)[0]


def compute_rates(iterations: int = 20_000_000) -> tuple[float, float]:
    """(per wall second, per CPU second) millions of guest instructions of the compute loop."""
    machine = _Machine(_COMPUTE_LOOP)
    machine.run(1000)
    wall = machine.run(iterations)
    return iterations * 5 / wall / 1e6, iterations * 5 / max(machine.cpu_seconds, 1e-9) / 1e6


# The same loop as a host function: rcx = iterations (from rsi), rdi = a buffer.
# mov %rsi,%rcx; xor %eax,%eax; xor %ebx... (rbx is callee-saved: push/pop it)
_NATIVE_LOOP = bytes.fromhex("53" "4889f1" "31c0" "31db" "31d2") + _COMPUTE_LOOP + bytes.fromhex("5b" "c3")


def native_compute_mips(iterations: int = 200_000_000) -> float:
    """The compute loop's instructions per second (millions) run natively on the host CPU."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page[:len(_NATIVE_LOOP)] = _NATIVE_LOOP
    data = ctypes.create_string_buffer(64)
    loop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    loop(ctypes.addressof(data), 1000)
    start = time.perf_counter()
    loop(ctypes.addressof(data), iterations)
    elapsed = time.perf_counter() - start
    del loop
    page.close()
    return iterations * 5 / elapsed / 1e6


if __name__ == "__main__":
    print(f"null hypercall {null_hypercall_roundtrip_us():.2f} us, "
          f"emulated rdmsr {emulated_rdmsr_roundtrip_us():.2f} us, compute {compute_mips():.0f} MIPS")

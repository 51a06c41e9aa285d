"""Micro-benchmarks of the KVM engine: the same minimal PV kernels pvhyp/cpu/bench.py runs
on unicorn (the CLI hands their machine code over, so both engines run one program), and
the compute loop run natively on the host for the comparison the issue asks for.

`KvmBenchMachine(code)` is a scratch VM (its own machine memory, no hypervisor): `code` at
0x400000, a data page after it, a stack; hypercall EXIT_HYPERCALL leaves the run.
"""
from __future__ import annotations

import ctypes
import mmap
import time

from abi.x86_pte import l1_table_offset, l2_table_offset, l3_table_offset, l4_table_offset
from pvhyp.domain import Domain
from pvhyp.kvm.machine import KvmMachine
from pvhyp.kvm.quirks import probe
from pvhyp.memory import MachineMemory
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import ExitReason
from pvhyp.pv.entry import PvEntry, initial_state
from pvhyp.pv.state import PvState

_MEMORY = 16 << 20
_FIRST_FRAME = 0x10
_CODE_VA, _DATA_VA, _STACK_VA = 0x400000, 0x401000, 0x402000
EXIT_HYPERCALL = 63
# The null-hypercall loop as a Xen guest must write it: `syscall` clobbers rcx and r11 (it
# does on kvm_pvm as on Xen; unicorn leaves them, which pvhyp/cpu/bench.py's loop relies on).
# loop: push %rcx; mov $0,%eax; syscall; pop %rcx; dec %rcx; jnz loop
HYPERCALL_LOOP = bytes.fromhex("51" "b800000000" "0f05" "59" "48ffc9" "75f2")


class KvmBenchMachine:
    def __init__(self, code: bytes):
        self.memory = MachineMemory(_MEMORY, "pvhyp-kvm-bench")
        frames = iter(range(_FIRST_FRAME, _MEMORY >> 12))
        alloc = frames.__next__
        xen_area = L.XenArea(self.memory, alloc, ())
        self.machine = KvmMachine(self.memory, alloc, lambda mfn: 1, probe())
        l4 = alloc()
        xen_area.install_into_l4(l4)
        self.machine.area.install_into_l4(l4)
        tables: dict[tuple[int, int], int] = {}
        pages = {}
        for va in (_CODE_VA, _DATA_VA, _STACK_VA):
            table = l4
            for table_offset in (l4_table_offset, l3_table_offset, l2_table_offset):
                key = (table, table_offset(va))
                if key not in tables:
                    tables[key] = alloc()
                    self.memory.write_u64((table << 12) + key[1] * 8, (tables[key] << 12) | 0x7)
                table = tables[key]
            pages[va] = alloc()
            self.memory.write_u64((table << 12) + l1_table_offset(va) * 8, (pages[va] << 12) | 0x7)
        self.memory.write(pages[_CODE_VA] << 12, code)
        # No hypervisor: the engine alone is measured (nothing on this path reaches domain.hv).
        vcpu = Domain(None, domid=1, max_vcpus=1, max_pages=0).vcpus[0]  # type: ignore[arg-type]
        vcpu.pv = PvState(vcpu)
        self.entry = vcpu.arch = PvEntry(self.memory, xen_area, vcpu, self.machine.make_engine,
                                         dispatch=self._dispatch)
        self.state = initial_state(_CODE_VA, _STACK_VA + 0x1000, 0, l4)

    def _dispatch(self, entry, nr, args):
        if nr == EXIT_HYPERCALL:
            entry.engine.request_exit()
        return 0

    def run(self, rcx: int, rdi: int = _DATA_VA) -> float:
        self.state.gprs.update(rcx=rcx, rdi=rdi)
        self.entry.start(self.state)
        start = time.perf_counter()
        reason = self.entry.run()
        elapsed = time.perf_counter() - start
        if reason is not ExitReason.REQUESTED:
            raise RuntimeError(f"benchmark kernel stopped with {reason}: {self.entry.engine.error or self.entry.crash_reason}")
        return elapsed

    def exits(self) -> dict[str, int]:
        return dict(self.entry.engine.exits)      # type: ignore[attr-defined]

    def close(self) -> None:
        self.entry.engine.close()
        self.machine.close()
        self.memory.close()


def roundtrip_us(code: bytes, iterations: int) -> float:
    """Microseconds per trap of a loop kernel (a hypercall, an emulated instruction)."""
    machine = KvmBenchMachine(code)
    try:
        machine.run(20)
        return machine.run(iterations) / iterations * 1e6
    finally:
        machine.close()


def guest_mips(code: bytes, instructions_per_iteration: int, iterations: int = 20_000_000) -> float:
    machine = KvmBenchMachine(code)
    try:
        machine.run(1000)
        return iterations * instructions_per_iteration / machine.run(iterations) / 1e6
    finally:
        machine.close()


def native_mips(loop: bytes, instructions_per_iteration: int, iterations: int = 20_000_000) -> float:
    """The same loop (rcx = count, rdi = a scratch qword) run by the host CPU, as a C function."""
    # push rbx; mov rcx, rdi; mov rdi, rsi; <loop>; pop rbx; ret
    code = bytes.fromhex("53" "4889f9" "4889f7") + loop + bytes.fromhex("5b" "c3")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_void_p)(address)
    scratch = ctypes.c_uint64(0)
    function(1000, ctypes.addressof(scratch))
    start = time.perf_counter()
    function(iterations, ctypes.addressof(scratch))
    elapsed = time.perf_counter() - start
    del function
    return iterations * instructions_per_iteration / elapsed / 1e6

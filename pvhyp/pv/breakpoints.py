"""Which data breakpoints a PV guest's %dr7 arms: the one decoding every CPU engine uses.

Xen leaves a PV guest's breakpoints in the real debug registers; each engine
realises them its own way (unicorn with memory hooks, KVM in the vCPU's debug
registers), but both model the same subset: data breakpoints (R/W = write or
read/write) that are enabled locally or globally. Instruction and I/O
breakpoints are not modelled (Xen emulates I/O ones: `PvState.dr7_emul`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from abi.x86_regs import DR_CONTROL_SHIFT, DR_CONTROL_SIZE, DR_RW_READ, DR_RW_WRITE

_LENGTHS = {0: 1, 1: 2, 2: 8, 3: 4}        # %dr7 LEN field -> bytes


@dataclass(frozen=True)
class DataBreakpoint:
    index: int              # 0..3: %dr0..%dr3 holds its address
    rw: int                 # DR_RW_WRITE or DR_RW_READ (read or write)
    length: int             # bytes: 1, 2, 4 or 8
    control: int            # its L/G enable bits and R/W+LEN field, as in %dr7

    @property
    def on_reads(self) -> bool:
        return self.rw == DR_RW_READ


def data_breakpoints(dr7: int) -> Iterator[DataBreakpoint]:
    """The enabled data breakpoints of `dr7`, in index order."""
    for index in range(4):
        if not (dr7 >> (2 * index)) & 3:
            continue
        shift = DR_CONTROL_SHIFT + DR_CONTROL_SIZE * index
        rw = (dr7 >> shift) & 3
        if rw not in (DR_RW_WRITE, DR_RW_READ):
            continue        # instruction and I/O breakpoints are not modelled
        control = (1 << (2 * index)) | (0xF << shift) & dr7
        yield DataBreakpoint(index, rw, _LENGTHS[(dr7 >> (shift + 2)) & 3], control)

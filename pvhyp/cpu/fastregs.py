"""Register access without the Python binding's per-call allocations.

unicorn's Python `reg_read_batch` builds several ctypes arrays per call,
about 1.5 us per register; on the hypercall path that was most of the cost.
Here each distinct set of registers gets its arrays once and every later
access is a single C call.  Only 64-bit scalar registers go through here
(GPRs, RIP, RFLAGS, selectors, FS/GS bases, CR2-4).
"""
from __future__ import annotations

import ctypes

from unicorn.unicorn_py3.unicorn import uclib

_UC_ERR_OK = 0


class RegisterSet:
    __slots__ = ("count", "ids", "values", "pointers")

    def __init__(self, reg_ids: tuple[int, ...]):
        self.count = len(reg_ids)
        self.ids = (ctypes.c_int * self.count)(*reg_ids)
        self.values = (ctypes.c_uint64 * self.count)()
        base = ctypes.addressof(self.values)
        self.pointers = (ctypes.c_void_p * self.count)(*(base + 8 * i for i in range(self.count)))


class FastRegisters:
    def __init__(self, uc, name_to_id: dict[str, int]):
        self._handle = uc._uch
        self._ids = name_to_id
        self._sets: dict[tuple, RegisterSet] = {}

    def _set_for(self, names: tuple) -> RegisterSet:
        regs = self._sets.get(names)
        if regs is None:
            regs = self._sets[names] = RegisterSet(tuple(self._ids[n] for n in names))
        return regs

    def read(self, names: tuple) -> tuple:
        regs = self._set_for(names)
        # Selectors are written as 16-bit values: clear stale upper bytes first.
        ctypes.memset(regs.values, 0, 8 * regs.count)
        if uclib.uc_reg_read_batch(self._handle, regs.ids, regs.pointers, regs.count) != _UC_ERR_OK:
            raise RuntimeError(f"unicorn refused to read {names}")
        return tuple(regs.values)

    def write(self, names: tuple, values) -> None:
        regs = self._set_for(names)
        for i, value in enumerate(values):
            regs.values[i] = value & 0xFFFF_FFFF_FFFF_FFFF
        if uclib.uc_reg_write_batch(self._handle, regs.ids, regs.pointers, regs.count) != _UC_ERR_OK:
            raise RuntimeError(f"unicorn refused to write {names}")

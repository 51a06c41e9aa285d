"""What the PV state tells the CPU engine: a value it must load again.

The hypercall handlers change a vCPU's PV state (pvhyp/pv/state.py,
descriptors.py) while the CPU may hold a copy of it in its registers;
`notify_arch(vcpu, change)` asks the engine (`vcpu.arch.pv_changed`) to load
it from `vcpu.pv`. Its own module so that both of them can name a change
without importing each other.
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pvhyp.domain import VCPU


class PvChange(enum.Enum):
    """A PvState value the CPU holds a copy of; the value is PvState's field name."""

    FS_BASE = "fs_base"
    GS_BASE_KERNEL = "gs_base_kernel"
    GS_BASE_USER = "gs_base_user"
    GS_SEL_USER = "gs_sel_user"
    DEBUGREG = "debugreg"
    GDT = "gdt"
    CR0_TS = "cr0_ts"


def notify_arch(vcpu: "VCPU", change: PvChange) -> None:
    """Tell the vCPU's engine, if it has one yet (it loads everything when it starts)."""
    if vcpu.arch is not None:
        vcpu.arch.pv_changed(change)

"""C argument types of hypercall prototypes: what a 64-bit register becomes.

The table hands handlers unsigned 64-bit values; Xen's prototypes declare
some parameters `int` or `unsigned int`, which keep only the low 32 bits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pvhyp.guest_access import handle_ok

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext


def c_int(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value


def c_uint(value: int) -> int:
    return value & 0xFFFF_FFFF


def guest_handle_okay(ctx: HypercallContext, addr: int, count: int, size: int) -> bool:
    """Xen's guest_handle_okay: the range may be accessed at all (not that it is mapped)."""
    if count and count >= ((1 << 64) - 1) // size:
        return False
    return handle_ok(ctx.domain, addr)

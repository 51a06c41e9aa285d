"""Reading an op's struct from a guest and patching results into the same bytes.

Shared by the hypercall families whose ops Xen copies back whole (event
channels, grant tables): results are patched into the bytes the guest wrote,
never rebuilt from zeros, so padding and other union members go back as read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi.fast import codec

if TYPE_CHECKING:
    from construct import Construct

    from pvhyp.hypercall_table import HypercallContext

_LAYOUTS: dict[int, dict[str, tuple[int, Construct, int]]] = {}


def layout(struct: Construct) -> dict[str, tuple[int, Construct, int]]:
    """name -> (offset, subcon, size) of a struct's fields, computed once."""
    lay = _LAYOUTS.get(id(struct))
    if lay is None:
        lay, offset = {}, 0
        for sub in struct.subcons:
            size = sub.sizeof()
            if sub.name:
                lay[sub.name] = (offset, sub, size)
            offset += size
        _LAYOUTS[id(struct)] = lay
    return lay


def field_offset(struct: Construct, name: str) -> int:
    return layout(struct)[name][0]


def patch(struct: Construct, raw: bytearray, **fields: Any) -> bytearray:
    """Write `fields` of `struct` into `raw` at their offsets, leaving every other byte."""
    lay = layout(struct)
    for name, value in fields.items():
        offset, sub, size = lay[name]
        if isinstance(value, int):
            raw[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        else:
            raw[offset:offset + size] = sub.build(value)
    return raw


def read_op(ctx: HypercallContext, struct: Construct, addr: int) -> tuple[bytearray, dict[str, Any]]:
    c = codec(struct)
    raw = bytearray(ctx.read(addr, c.size))
    return raw, dict(c.parse(raw))

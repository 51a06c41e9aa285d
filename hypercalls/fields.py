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

_FIELD_OFFSETS: dict[int, dict[str, tuple[int, Construct, int]]] = {}


def field_offsets(struct: Construct) -> dict[str, tuple[int, Construct, int]]:
    """name -> (offset, subcon, size) of a struct's fields, computed once."""
    offsets = _FIELD_OFFSETS.get(id(struct))
    if offsets is None:
        offsets, offset = {}, 0
        for sub in struct.subcons:
            size = sub.sizeof()
            if sub.name:
                offsets[sub.name] = (offset, sub, size)
            offset += size
        _FIELD_OFFSETS[id(struct)] = offsets
    return offsets


def field_offset(struct: Construct, name: str) -> int:
    return field_offsets(struct)[name][0]


def patch(struct: Construct, raw: bytearray, **fields: Any) -> bytearray:
    """Write `fields` of `struct` into `raw` at their offsets, leaving every other byte."""
    offsets = field_offsets(struct)
    for name, value in fields.items():
        offset, sub, size = offsets[name]
        if isinstance(value, int):
            raw[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        else:
            raw[offset:offset + size] = sub.build(value)
    return raw


def read_op(ctx: HypercallContext, struct: Construct, addr: int) -> tuple[bytearray, dict[str, Any]]:
    c = codec(struct)
    raw = bytearray(ctx.read(addr, c.size))
    return raw, dict(c.parse(raw))

"""Walk a construct definition down to its leaf fields: (path, offset, size).

The fuzzer writes values straight into bytes at these offsets, so any struct
in abi/ (nested structs, arrays, C unions, typedefs) can be generated without
a hand-written generator, and without constructing dicts for construct.
"""
from __future__ import annotations

import functools

import construct as cs

MAX_ARRAY_LEAVES = 64   # beyond this, array elements are left as raw bytes


@functools.lru_cache(maxsize=None)
def leaves(con) -> tuple[tuple[str, int, int], ...]:
    """Leaf integer fields of `con` as (dotted path, byte offset, size); padding is skipped."""
    out: list[tuple[str, int, int]] = []
    _walk(con, "", 0, out)
    return tuple(out)


def sizeof(con) -> int:
    return con.sizeof()


def _walk(con, path: str, offset: int, out: list) -> None:
    if isinstance(con, cs.Renamed):
        name = con.name or ""
        _walk(con.subcon, f"{path}.{name}" if path and name else (name or path), offset, out)
    elif isinstance(con, cs.Struct):
        for sub in con.subcons:
            _walk(sub, path, offset, out)
            offset += sub.sizeof()
    elif isinstance(con, (cs.FormatField, cs.BytesInteger)):
        out.append((path, offset, con.sizeof()))
    elif isinstance(con, cs.Array) and isinstance(con.count, int):
        elem = con.subcon.sizeof()
        if con.count * max(1, len(leaves(con.subcon))) > MAX_ARRAY_LEAVES:
            return
        for i in range(con.count):
            _walk(con.subcon, f"{path}[{i}]", offset + i * elem, out)
    elif hasattr(con, "subcons") and not isinstance(con, cs.Struct):   # a C union
        for member in con.subcons:
            _walk(member, path, offset, out)
    elif isinstance(con, (cs.Padded, cs.Const, cs.Bytes)) or type(con).__name__ == "Padding":
        return
    elif isinstance(con, cs.Subconstruct):   # Typedef and friends
        _walk(con.subcon, path, offset, out)

"""Hypothesis strategies derived from the construct definitions.

``strategy_for(start_info)`` draws values of the shape construct's parse
returns (as plain dicts/lists): integers biased toward the boundaries where
hypervisor checks go wrong (0, 1, max, max-1, sign edges, powers of two),
bytes of the exact length, and for a ``CUnion`` one member drawn and then
normalised through build+parse, so every drawn union is what a parse of real
memory would give (all members consistent).  Used by the round-trip tests
and by the fuzzer.

Hypothesis draws from a bounded buffer, so long arrays and byte strings
(shared_info's 32 vcpu_info, the 256-entry trap table, console rings) draw
a short varied head and repeat one drawn value for the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from construct import Array, Bytes, Construct, FormatField, Padded, Renamed, Struct
from hypothesis import strategies as st

from abi.cdefs import CUnion, Typedef, plain

_FORMAT_BITS = {"B": 8, "H": 16, "I": 32, "L": 32, "Q": 64, "b": 8, "h": 16, "i": 32, "l": 32, "q": 64}


def boundary_integers(bits: int, signed: bool = False) -> st.SearchStrategy[int]:
    """Integers of a C type, half of the draws from its edge values."""
    if signed:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    edges = {low, low + 1, high, high - 1, 0, 1, -1, 2}
    edges |= {1 << n for n in range(bits - 1)} | {(1 << n) - 1 for n in range(1, bits)}
    in_range = sorted(e for e in edges if low <= e <= high)
    return st.one_of(st.sampled_from(in_range), st.integers(low, high))


# Beyond these lengths, draw a head and repeat a filler (see the module note).
LONG_BYTES = 64
LONG_ARRAY = 8


_Seq = TypeVar("_Seq", bytes, list[Any])


def _head_then_fill(head: st.SearchStrategy[_Seq], fill: st.SearchStrategy[_Seq], length: int
                    ) -> st.SearchStrategy[_Seq]:
    return st.builds(lambda h, f: (h + f * length)[:length], head, fill)


def sized_bytes(length: int) -> st.SearchStrategy[bytes]:
    if length <= LONG_BYTES:
        return st.binary(min_size=length, max_size=length)
    return _head_then_fill(st.binary(max_size=LONG_BYTES), st.binary(min_size=1, max_size=1),
                           length)


def sized_list(element: st.SearchStrategy[Any], length: int) -> st.SearchStrategy[list[Any]]:
    if length <= LONG_ARRAY:
        return st.lists(element, min_size=length, max_size=length)
    return _head_then_fill(st.lists(element, max_size=LONG_ARRAY), element.map(lambda e: [e]),
                           length)


def _strip(node: Construct) -> Construct:
    while isinstance(node, (Renamed, Typedef)):
        node = node.subcon
    return node


def _as_member(name: str) -> Callable[[Any], dict[str, Any]]:
    """A union member's value as a union value: {name: value}."""
    return lambda value: {name: value}


def strategy_for(construct: Construct) -> st.SearchStrategy[Any]:
    """Values of ``construct`` (a registered struct or any part of one)."""
    node = _strip(construct)
    if isinstance(node, FormatField):
        code = node.fmtstr[-1]
        return boundary_integers(_FORMAT_BITS[code], signed=code.islower())
    if isinstance(node, Bytes) and isinstance(node.length, int):
        return sized_bytes(node.length)
    if isinstance(node, Array) and isinstance(node.count, int):
        return sized_list(strategy_for(node.subcon), node.count)
    if isinstance(node, CUnion):
        one_member = st.one_of(*(
            strategy_for(member).map(_as_member(member.name))
            for member in node.subcons))
        return one_member.map(lambda value: plain(node.parse(node.build(value))))
    if isinstance(node, Struct):
        return st.fixed_dictionaries({
            sub.name: strategy_for(sub) for sub in node.subcons
            if sub.name and not isinstance(_strip(sub), Padded)
        })
    raise TypeError(f"no strategy for {type(node).__name__}")


def raw_bytes_for(construct: Construct) -> st.SearchStrategy[bytes]:
    """Arbitrary memory of the construct's size (what a hostile guest may hold)."""
    return sized_bytes(construct.sizeof())

"""Fast parse/build for hot paths, derived from the construct definitions.

``codec(start_info)`` walks the construct tree once and generates a
``struct.Struct`` format plus two small Python functions (source kept in
``codec.source`` for reading) that turn the unpacked tuple into nested dicts
and lists, and back.  The construct definition stays the only description of
a layout; the codec is a compiled view of it, and tests/abi/test_roundtrip.py
checks that both agree on every registered struct.

A codec has ``size``, ``parse(buf, offset=0)``, ``parse_array(buf, count,
offset=0)``, ``build(value) -> bytes`` and ``build_into(buf, offset, value)``
(writes in place, e.g. OUT fields back into a guest page).

Values look like construct's, as plain types: nested structs are dicts,
arrays lists, ``Bytes`` bytes, padding absent, and a ``CUnion`` a dict of
every member (built from whichever members are present, OR-ed; see cdefs).
Anything the generator does not know falls back to construct's own
``compile()`` (slower, same values).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING, Any

from construct import Array, Bytes, Construct, FormatField, Padded, Pass, Renamed, Struct

from abi.cdefs import CUnion, Typedef, plain

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer


class _Unsupported(Exception):
    pass


def _strip(node: Construct) -> Construct:
    while isinstance(node, (Renamed, Typedef)):
        node = node.subcon
    return node


class _Generator:
    """Emits, for one construct, a struct format, a parse expression over the
    unpacked tuple ``t`` and the argument list for ``pack``."""

    def __init__(self) -> None:
        self.fmt: list[str] = []
        self.count = 0  # tuple items so far
        self.namespace: dict[str, Any] = {}  # helpers the generated source calls
        self.depth = 0

    def helper(self, obj: object, prefix: str) -> str:
        name = f"{prefix}{len(self.namespace)}"
        self.namespace[name] = obj
        return name

    @staticmethod
    def _item(base: str, i: int) -> str:
        return f"t[{i}]" if base == "0" else f"t[{base}+{i}]"

    def parse_expr(self, node: Construct, base: str, start: int) -> tuple[str, int]:
        """(expression, items consumed) for ``node`` whose first item is t[base+start]."""
        node = _strip(node)
        if isinstance(node, FormatField):
            self.fmt.append(node.fmtstr[-1])
            return self._item(base, start), 1
        if isinstance(node, Bytes) and isinstance(node.length, int):
            self.fmt.append(f"{node.length}s")
            return self._item(base, start), 1
        if isinstance(node, Padded) and isinstance(node.subcon, type(Pass)) and isinstance(node.length, int):
            self.fmt.append(f"{node.length}x")
            return "", 0
        if isinstance(node, CUnion):
            self.fmt.append(f"{node.size}s")
            return f"{self.helper(_union_parser(node), 'UP')}({self._item(base, start)})", 1
        if isinstance(node, Struct):
            parts, used = [], 0
            for sub in node.subcons:
                expr, n = self.parse_expr(sub, base, start + used)
                used += n
                if sub.name:
                    parts.append(f"{sub.name!r}: {expr}")
                elif n:
                    raise _Unsupported("unnamed field with a value")
            return "{" + ", ".join(parts) + "}", used
        if isinstance(node, Array) and isinstance(node.count, int):
            element = _strip(node.subcon)
            if isinstance(element, FormatField):
                self.fmt.append(f"{node.count}{element.fmtstr[-1]}")
                first = start if base == "0" else f"{base}+{start}"
                return f"list(t[{first}:{first}+{node.count}])", node.count
            self.depth += 1
            var = f"k{self.depth}"
            fmt_before = len(self.fmt)
            expr, per = self.parse_expr(element, var, 0)
            self.depth -= 1
            element_fmt = self.fmt[fmt_before:]
            self.fmt[fmt_before:] = element_fmt * node.count
            first = start if base == "0" else f"{base}+{start}"
            return (f"[{expr} for {var} in range({first}, {first}+{per * node.count}, {per})]",
                    per * node.count)
        raise _Unsupported(type(node).__name__)

    def build_args(self, node: Construct, acc: str) -> list[str]:
        """Arguments for ``pack`` (starred where they expand) taken from ``acc``."""
        node = _strip(node)
        if isinstance(node, (FormatField, Bytes)):
            return [acc]
        if isinstance(node, Padded):
            return []
        if isinstance(node, CUnion):
            return [f"{self.helper(_union_builder(node), 'UB')}({acc})"]
        if isinstance(node, Struct):
            args = []
            for sub in node.subcons:
                if sub.name:
                    args += self.build_args(sub, f"{acc}[{sub.name!r}]")
            return args
        if isinstance(node, Array):
            element = _strip(node.subcon)
            if isinstance(element, FormatField):
                return [f"*{acc}"]
            self.depth += 1
            var = f"e{self.depth}"
            inner = self.build_args(element, var)
            self.depth -= 1
            return [f"*[x for {var} in {acc} for x in ({', '.join(inner)},)]"]
        raise _Unsupported(type(node).__name__)


class Codec:
    """parse/build for one construct, generated from its definition."""

    def __init__(self, construct: Construct) -> None:
        self.construct = construct
        gen = _Generator()
        parse_expr, _ = gen.parse_expr(construct, "0", 0)
        build_args = gen.build_args(construct, "o")
        self.format = struct.Struct("<" + "".join(gen.fmt))
        self.size = self.format.size
        if self.size != construct.sizeof():
            raise AssertionError(f"fast codec size {self.size} != construct size {construct.sizeof()}")
        self.source = (
            f"def from_tuple(t):\n    return {parse_expr}\n\n"
            f"def build(o):\n    return pack({', '.join(build_args)})\n\n"
            f"def build_into(buf, offset, o):\n    pack_into(buf, offset, {', '.join(build_args)})\n"
        )
        namespace = dict(gen.namespace, pack=self.format.pack, pack_into=self.format.pack_into)
        exec(compile(self.source, f"<abi.fast codec, {self.size} bytes>", "exec"), namespace)
        self._from_tuple: Callable[[tuple[Any, ...]], Any] = namespace["from_tuple"]
        self.build: Callable[[Any], bytes] = namespace["build"]
        # (writable buffer, offset, value): in place
        self.build_into: Callable[[WriteableBuffer, int, Any], None] = namespace["build_into"]
        self._unpack_from = self.format.unpack_from
        self._iter_unpack = self.format.iter_unpack

    def parse(self, buf: ReadableBuffer, offset: int = 0) -> Any:
        return self._from_tuple(self._unpack_from(buf, offset))

    def parse_array(self, buf: ReadableBuffer, count: int, offset: int = 0) -> list[Any]:
        """``count`` consecutive structs starting at ``offset``."""
        view = memoryview(buf)[offset:offset + count * self.size]
        if len(view) != count * self.size:
            raise struct.error(f"need {count * self.size} bytes at offset {offset}, have {len(view)}")
        convert = self._from_tuple
        return [convert(t) for t in self._iter_unpack(view)]


class CompiledCodec:
    """Fallback for constructs the generator cannot express: construct's compile()."""

    def __init__(self, construct: Construct) -> None:
        self.construct = construct
        self.compiled = construct.compile()
        self.size: int = construct.sizeof()
        self.source = "(construct compile() fallback)"

    # buf: anything that slices to bytes (as a Codec's buffer does)
    def parse(self, buf: Any, offset: int = 0) -> Any:
        return plain(self.compiled.parse(bytes(buf[offset:offset + self.size])))

    def build(self, obj: Any) -> bytes:
        built: bytes = self.compiled.build(obj)
        return built

    def build_into(self, buf: Any, offset: int, obj: Any) -> None:
        buf[offset:offset + self.size] = self.build(obj)

    def parse_array(self, buf: Any, count: int, offset: int = 0) -> list[Any]:
        return [self.parse(buf, offset + i * self.size) for i in range(count)]


_codecs: dict[int, tuple[object, Codec | CompiledCodec]] = {}


def codec(construct: Construct) -> Codec | CompiledCodec:
    """The (cached) fast codec of a construct definition."""
    cached = _codecs.get(id(construct))
    if cached is None:
        made: Codec | CompiledCodec
        try:
            made = Codec(construct)
        except _Unsupported:
            made = CompiledCodec(construct)
        cached = _codecs[id(construct)] = (construct, made)  # keep the key alive
    return cached[1]


def _union_parser(union: CUnion) -> Callable[[bytes], dict[str, Any]]:
    members = [(m.name, codec(_strip(m))) for m in union.subcons]

    def parse_union(data: bytes) -> dict[str, Any]:
        return {name: member.parse(data) for name, member in members}
    return parse_union


def _union_builder(union: CUnion) -> Callable[[dict[str, Any]], bytes]:
    members = [(m.name, codec(_strip(m))) for m in union.subcons]
    size = union.size

    def build_union(obj: dict[str, Any]) -> bytes:
        built = [member.build(obj[name]) for name, member in members if name in obj]
        if len(built) == 1:
            return built[0]  # pack's "Ns" zero-fills the rest
        merged = reduce(lambda acc, b: acc | int.from_bytes(b, "little"), built, 0)
        return merged.to_bytes(size, "little")
    return build_union


def struct_of(construct: Construct) -> struct.Struct:
    """The flat ``struct.Struct`` of a layout, for hot paths that pack and unpack plain tuples
    (netif ring entries, gnttab_copy ops); a layout the generator cannot flatten is a TypeError."""
    made = codec(construct)
    if not isinstance(made, Codec):
        raise TypeError("this layout has no flat struct format")
    return made.format

"""C shapes the header modules are written in: scalar types, typedefs, unions.

Not a Xen header: this is the vocabulary for writing Xen's headers down in
construct so that a module reads like the header beside it.

* Scalars are construct's little-endian fields under their C names
  (``uint64_t``, ``unsigned_long``, ...), for the x86-64 ABI (LP64).
* ``Typedef("domid_t", uint16_t)`` is transparent for parsing and building; it
  only remembers the C type name, so ``pvhyp abi`` can show ``domid_t``.
* ``CUnion(...)`` is a C union.  Construct's own ``Union`` has no fixed size,
  so unions here follow C instead:

  - size: the largest member, rounded up to the strictest member alignment
    (as a C compiler does; every union in the Xen ABI is fixed-size);
  - parse: a dict with *every* member decoded from the same bytes, exactly
    what C code sees through each member;
  - build: each member present in the dict is built, zero-extended to the
    union's size, and the results are OR-ed together.  Build with one member
    (``{"domU": {...}}``); a dict produced by parse also rebuilds to the bytes
    it came from (every byte some member can see), so parse/build round-trip.

Every struct and union here has Xen's x86-64 layout: alignment gaps the C
compiler inserts are written as explicit ``Padding(n)``; pad fields the
header names are ordinary named fields.
"""

from typing import Any

from construct import (
    Array,
    Construct,
    Container,
    FormatField,
    Int8sl,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    ListContainer,
    Padded,
    SizeofError,
    Struct,
    Subconstruct,
    stream_read,
    stream_write,
)

# --- scalars (x86-64, LP64, little-endian) ------------------------------------
uint8_t = Int8ul
uint16_t = Int16ul
uint32_t = Int32ul
uint64_t = Int64ul
int8_t = Int8sl
int16_t = Int16sl
int32_t = Int32sl
int64_t = Int64sl
unsigned_int = Int32ul
signed_int = Int32sl
unsigned_long = Int64ul
signed_long = Int64sl


class Typedef(Subconstruct):  # type: ignore[misc]  # construct is untyped
    """A C typedef: the same bytes as ``subcon``, shown under ``c_name``."""

    def __init__(self, c_name: str, subcon: Construct) -> None:
        super().__init__(subcon)
        self.c_name = c_name

    def _emitparse(self, code: Any) -> Any:
        return self.subcon._compileparse(code)

    def _emitbuild(self, code: Any) -> Any:
        return self.subcon._compilebuild(code)

    def __repr__(self) -> str:
        return f"<Typedef {self.c_name}>"


def XEN_GUEST_HANDLE(target: str) -> Typedef:
    """A guest pointer: on x86-64, ``struct { target *p; }``, 8 bytes, the
    guest-virtual address of the object (0 for none)."""
    return Typedef(f"XEN_GUEST_HANDLE({target})", Int64ul)


def XEN_GUEST_HANDLE_64(target: str) -> Typedef:
    """The tools-interface handle: on x86-64 the same 8 bytes as a plain handle."""
    return Typedef(f"XEN_GUEST_HANDLE_64({target})", Int64ul)


class CUnion(Construct):  # type: ignore[misc]  # construct is untyped
    """A C union of named members (``"name" / subcon``); see the module note."""

    def __init__(self, *members: Construct) -> None:
        super().__init__()
        self.subcons = list(members)
        for member in self.subcons:
            if not member.name:
                raise ValueError("CUnion members need names")
        largest = max(member.sizeof() for member in self.subcons)
        align = alignment(self)
        self.size: int = -(-largest // align) * align

    def _parse(self, stream: Any, context: Any, path: str) -> Container:
        data = stream_read(stream, self.size, path)
        return Container({m.name: m.parse(data) for m in self.subcons})

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        stream_write(stream, self.build_bytes(obj), self.size, path)
        return obj

    def build_bytes(self, obj: Any) -> bytes:
        merged = bytearray(self.size)
        for member in self.subcons:
            if member.name in obj:
                built = member.build(obj[member.name])
                for i, byte in enumerate(built):
                    merged[i] |= byte
        return bytes(merged)

    def _sizeof(self, context: Any, path: str) -> int:
        if self.size is None:  # pragma: no cover - set in __init__
            raise SizeofError(path=path)
        return self.size

    def __repr__(self) -> str:
        return f"<CUnion {[m.name for m in self.subcons]}>"


def alignment(subcon: Construct) -> int:
    """C alignment of a construct built from this module's vocabulary."""
    while isinstance(subcon, Subconstruct) and not isinstance(subcon, Array):
        if isinstance(subcon, Padded):
            return 1
        subcon = subcon.subcon
    if isinstance(subcon, FormatField):
        size: int = subcon.sizeof()
        return size
    if isinstance(subcon, Array):
        return alignment(subcon.subcon)
    if isinstance(subcon, (Struct, CUnion)):
        return max((alignment(member) for member in subcon.subcons), default=1)
    return 1  # bytes, padding


def plain(value: Any) -> Any:
    """Construct's parse result as plain dicts/lists, without its ``_io`` keys."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "_io"}
    if isinstance(value, (list, ListContainer)):
        return [plain(v) for v in value]
    return value

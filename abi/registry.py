"""Every struct and constant abi/ declares, with the Xen header it comes from.

The header cross-check, ``pvhyp abi``, the hypothesis strategies and the
fuzzer all iterate over this registry, so a definition is only trusted once
it is here; ``tests/abi/test_registry.py`` fails if a module, struct or
constant under abi/ escapes it.

What counts:

* a *struct* is a module-level construct ``Struct`` or ``CUnion``; its
  registered name is the global's name, which is the C tag;
* a *constant* is a module-level ``int`` (dunder names aside), named as the
  C macro or enumerator it mirrors.

Every constant and struct is checked against its header unless the module
has no header (``x86_pte``, ``x86_regs``, ``e820``) or names it in ``NOT_IN_HEADER`` with
the reason (pvhyp's own derived offsets, for instance).

A module refers to another module's definitions through that module
(``xen.domid_t``); an object bound in two modules is credited to the first
in ``MODULES`` order, which is include order.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

from construct import (
    Array,
    Bytes,
    Construct,
    FormatField,
    Padded,
    Renamed,
    Struct,
)

from abi.cdefs import CUnion, Typedef

PUBLIC = "xen/include/public/"


@dataclass(frozen=True)
class HeaderModule:
    """One abi module and the public header it mirrors."""

    module: str
    header: str | None  # path under xen/include/public, or None
    why_no_header: str = ""
    c_prefix: str = ""  # C spelling = c_prefix + Python name
    # struct/constant name -> why it has no C twin; a module may also say so
    # itself in a module-level NOT_IN_HEADER dict (merged with this one)
    not_in_header: dict[str, str] = field(default_factory=dict)
    c_types: dict[str, str] = field(default_factory=dict)  # struct name -> C type, where not "struct NAME"


# Include order: a header's dependencies come first.
MODULES: tuple[HeaderModule, ...] = (
    HeaderModule("abi.errno", "errno.h", c_prefix="XEN_"),
    HeaderModule("abi.xen_x86_64", "arch-x86/xen-x86_64.h"),
    HeaderModule("abi.arch_x86_xen", "arch-x86/xen.h"),
    HeaderModule("abi.xen", "xen.h", c_types={"xen_uuid_t": "xen_uuid_t"}),
    HeaderModule(
        "abi.x86_pte",
        None,
        why_no_header="x86 page-table bits are architectural (Intel SDM / AMD APM); "
        "no Xen public header defines them",
    ),
    HeaderModule(
        "abi.x86_regs",
        None,
        why_no_header="x86 register bits (EFLAGS, CR0/CR4, EFER, DR6/DR7) are architectural "
        "(Intel SDM / AMD APM); Xen's public headers carry the registers but not their bits",
    ),
    HeaderModule("abi.event_channel", "event_channel.h"),
    HeaderModule("abi.grant_table", "grant_table.h"),
    HeaderModule("abi.features", "features.h"),
    HeaderModule("abi.version", "version.h"),
    HeaderModule("abi.sched", "sched.h"),
    HeaderModule("abi.memory", "memory.h"),
    HeaderModule(
        "abi.e820",
        None,
        why_no_header="the BIOS INT 15h E820 entry, which memory.h refers to but never defines",
    ),
    HeaderModule("abi.vcpu", "vcpu.h"),
    HeaderModule("abi.callback", "callback.h"),
    HeaderModule("abi.physdev", "physdev.h"),
    HeaderModule("abi.elfnote", "elfnote.h"),
    HeaderModule("abi.domctl", "domctl.h"),
    HeaderModule("abi.sysctl", "sysctl.h"),
    HeaderModule(
        "abi.pvhyp_channel",
        None,
        why_no_header="pvhyp's own socket channel for process domains (privcmd's part); not Xen's ABI",
    ),
    HeaderModule("abi.io.ring", "io/ring.h"),
    HeaderModule("abi.io.console", "io/console.h"),
    HeaderModule("abi.io.blkif", "io/blkif.h"),
    HeaderModule("abi.io.netif", "io/netif.h"),
    HeaderModule("abi.io.xenbus", "io/xenbus.h"),
    HeaderModule(
        "abi.io.toyif",
        None,
        why_no_header="pvhyp's toy split device of lab 6 (docs/lessons); not a Xen protocol",
    ),
    HeaderModule(
        "abi.io.xs_wire",
        "io/xs_wire.h",
        # Kept here because xenstored's engineer owns that module; it can move
        # into the module as NOT_IN_HEADER like abi.io.ring's.
        not_in_header={
            name: "pvhyp's byte offset/size of a ring-page field, derived from the struct"
            for name in (
                "XSD_SOCKMSG_SIZE",
                "XENSTORE_REQ_OFFSET",
                "XENSTORE_RSP_OFFSET",
                "XENSTORE_REQ_CONS_OFFSET",
                "XENSTORE_REQ_PROD_OFFSET",
                "XENSTORE_RSP_CONS_OFFSET",
                "XENSTORE_RSP_PROD_OFFSET",
                "XENSTORE_SERVER_FEATURES_OFFSET",
                "XENSTORE_CONNECTION_OFFSET",
                "XENSTORE_ERROR_OFFSET",
                "XENSTORE_DOMAIN_INTERFACE_SIZE",
            )
        },
    ),
)

# Modules under abi/ that are tooling, not headers (abi.trace_spool: the trace file the
# hypervisor and dom0 both append to, pvhyp's own format).
HELPER_MODULES = frozenset(
    {"abi", "abi.io", "abi.cdefs", "abi.registry", "abi.fast", "abi.strategies", "abi.shared_memory",
     "abi.trace_spool"}
)


@dataclass(frozen=True)
class StructEntry:
    name: str
    c_type: str  # "struct start_info", "union grant_entry_v2", "xen_uuid_t"
    module: str
    header: str | None
    construct: Construct = field(repr=False, compare=False)
    why_unchecked: str = ""  # set when the header cross-check cannot see it

    @property
    def checked(self) -> bool:
        return not self.why_unchecked

    @property
    def size(self) -> int:
        size: int = self.construct.sizeof()
        return size

    @property
    def docs(self) -> str:
        return self.construct.docs or ""


@dataclass(frozen=True)
class ConstantEntry:
    name: str
    value: int
    module: str
    header: str | None
    c_name: str | None  # None: no C twin to check (see why_unchecked)
    why_unchecked: str = ""


@dataclass(frozen=True)
class FieldInfo:
    """One named member, at any depth, of a registered struct."""

    path: str  # C member designator: "console.domU.mfn", "vcpu_info[0].time"
    name: str
    depth: int
    offset: int
    size: int
    type_name: str
    note: str


def header_modules() -> list[tuple[HeaderModule, ModuleType]]:
    """(spec, imported module) for every listed module that exists yet."""
    present = []
    for spec in MODULES:
        try:
            present.append((spec, importlib.import_module(spec.module)))
        except ModuleNotFoundError as e:
            if e.name != spec.module:
                raise
    return present


def unlisted_modules() -> list[str]:
    """Modules under abi/ that are neither in MODULES nor helpers."""
    # Walk the directory this file is in, not abi.__path__: under pytest,
    # tests/abi can join the package's path as a namespace portion.
    package_dir = str(Path(__file__).resolve().parent)
    listed = {spec.module for spec in MODULES} | HELPER_MODULES
    found = [m.name for m in pkgutil.walk_packages([package_dir], "abi.")]
    return sorted(name for name in found if name not in listed)


def is_struct_object(value: object) -> bool:
    return isinstance(value, (Struct, CUnion))


def is_constant(name: str, value: object) -> bool:
    dunder = name.startswith("__") and name.endswith("__")
    return isinstance(value, int) and not isinstance(value, bool) and not dunder


@cache
def _collect() -> tuple[tuple[StructEntry, ...], tuple[ConstantEntry, ...]]:
    structs: list[StructEntry] = []
    constants: list[ConstantEntry] = []
    seen_objects: set[int] = set()
    for spec, module in header_modules():
        not_in_header = {**spec.not_in_header, **getattr(module, "NOT_IN_HEADER", {})}
        for name, value in vars(module).items():
            if is_struct_object(value) and id(value) not in seen_objects:
                seen_objects.add(id(value))
                kind = "union" if isinstance(value, CUnion) else "struct"
                c_type = spec.c_types.get(name, f"{kind} {name}")
                why = spec.why_no_header if spec.header is None else not_in_header.get(name, "")
                structs.append(StructEntry(name, c_type, spec.module, spec.header, value, why))
            elif is_constant(name, value):
                if spec.header is None:
                    c_name, why = None, spec.why_no_header
                elif name in not_in_header:
                    c_name, why = None, not_in_header[name]
                else:
                    c_name, why = spec.c_prefix + name, ""
                constants.append(ConstantEntry(name, value, spec.module, spec.header, c_name, why))
    return tuple(structs), tuple(constants)


def structs() -> tuple[StructEntry, ...]:
    return _collect()[0]


def constants() -> tuple[ConstantEntry, ...]:
    return _collect()[1]


def struct(name: str) -> StructEntry:
    """The registered struct called ``name``; KeyError if there is none."""
    for entry in structs():
        if entry.name == name:
            return entry
    raise KeyError(name)


def constant(name: str) -> ConstantEntry:
    for entry in constants():
        if entry.name == name:
            return entry
    raise KeyError(name)


# --- walking a construct definition -----------------------------------------------
_SCALAR_C_TYPES = {
    "B": "uint8_t", "b": "int8_t", "H": "uint16_t", "h": "int16_t",
    "I": "uint32_t", "i": "int32_t", "L": "uint32_t", "l": "int32_t",
    "Q": "uint64_t", "q": "int64_t",
}


def unwrap(subcon: Construct) -> tuple[Construct, str, str | None]:
    """Strip name/doc wrappers: (inner construct, merged docs, typedef name)."""
    docs: list[str] = []
    typedef = None
    while True:
        if isinstance(subcon, Renamed):
            if subcon.docs and subcon.docs not in docs:
                docs.append(subcon.docs)
            subcon = subcon.subcon
        elif isinstance(subcon, Typedef):
            typedef = typedef or subcon.c_name
            subcon = subcon.subcon
        else:
            return subcon, "; ".join(docs), typedef


def type_name(subcon: Construct) -> str:
    """A C-like spelling of a construct: uint32_t, domid_t, struct vcpu_info[32]."""
    inner, _, typedef = unwrap(subcon)
    if typedef:
        return typedef
    if isinstance(inner, FormatField):
        fmtstr: str = inner.fmtstr
        return _SCALAR_C_TYPES.get(fmtstr[-1], fmtstr)
    if isinstance(inner, Bytes) and isinstance(inner.length, int):
        return f"uint8_t[{inner.length}]"
    if isinstance(inner, Array) and isinstance(inner.count, int):
        return f"{type_name(inner.subcon)}[{inner.count}]"
    if isinstance(inner, (Struct, CUnion)):
        for entry in structs():
            if entry.construct is inner:
                return entry.c_type
        return "union" if isinstance(inner, CUnion) else "struct"
    if isinstance(inner, Padded):
        return "padding"
    return type(inner).__name__


def members(inner: Construct) -> list[tuple[Construct, int]]:
    """(member, offset relative to the aggregate) of a Struct or CUnion."""
    if isinstance(inner, CUnion):
        return [(m, 0) for m in inner.subcons]
    placed, offset = [], 0
    for sub in inner.subcons:
        placed.append((sub, offset))
        offset += sub.sizeof()
    return placed


def fields(construct: Construct, *, array_elements: bool = True,
           include_padding: bool = False) -> list[FieldInfo]:
    """Every named member, depth first.  With ``array_elements``, members of
    an array's first element are listed too (as ``name[0].member``), which is
    what the header cross-check needs; the teaching view leaves them out and
    shows the compiler's alignment gaps instead (``include_padding``)."""
    found: list[FieldInfo] = []

    def walk(aggregate: Construct, base_path: str, base_offset: int, depth: int) -> None:
        for sub, offset in members(aggregate):
            if not sub.name:  # explicit padding: no C twin
                if include_padding:
                    found.append(FieldInfo(f"{base_path}(padding)", "(padding)", depth,
                                           base_offset + offset, sub.sizeof(), "", "alignment gap"))
                continue
            inner, note, _ = unwrap(sub)
            path = f"{base_path}{sub.name}"
            at = base_offset + offset
            found.append(FieldInfo(path, sub.name, depth, at, sub.sizeof(), type_name(sub), note))
            descend(inner, path, at, depth + 1)

    def descend(inner: Construct, path: str, at: int, depth: int) -> None:
        if isinstance(inner, (Struct, CUnion)):
            walk(inner, f"{path}.", at, depth)
        elif array_elements and isinstance(inner, Array):
            element, _, _ = unwrap(inner.subcon)
            if isinstance(element, (Struct, CUnion)):
                walk(element, f"{path}[0].", at, depth)

    inner, _, _ = unwrap(construct)
    walk(inner, "", 0, 0)
    return found

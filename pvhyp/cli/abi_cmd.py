"""`pvhyp abi [NAME] [--json]`: the Xen public ABI as pvhyp declares it.

With no NAME: every header and the structs it defines.  With NAME: one
struct's layout (offset, size, type, field, note), or a constant's value, or
every struct of one header (``xen.h``, ``io/blkif.h``).  ``--json`` prints the
same for tools.  Everything shown comes from abi.registry, the list the
header cross-check verifies against Xen 4.17's headers.
"""
from __future__ import annotations

import difflib
import json
from collections import defaultdict

from pvhyp.cli.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("abi", help="show Xen ABI structs and constants (offsets, sizes, notes)")
    p.add_argument("name", nargs="?", help="a struct (start_info), constant (EVTCHNOP_send) or header (xen.h)")
    p.add_argument("--json", action="store_true", help="machine-readable: structs with fields, and constants")
    p.set_defaults(func=run)


def run(args) -> int:
    from abi import registry

    if args.json:
        document = _json_document(registry)
        if args.name:
            document = _json_for_name(registry, document, args.name)
        print(json.dumps(document, indent=1))
        return 0
    if args.name is None:
        _print_overview(registry, show_structs=True)
        return 0
    return _print_name(registry, args.name)


def tour() -> int:
    """What `pvhyp` with no arguments shows: the headers, then one struct in full."""
    from abi import registry

    _print_overview(registry, show_structs=False)
    print()
    _print_struct(registry, registry.struct("start_info"))
    print("\nMore: `pvhyp abi` lists every struct, `pvhyp abi NAME` shows one, `pvhyp abi --json` for tools.")
    return 0


# --- text -------------------------------------------------------------------------------
def _header_label(spec_or_entry) -> str:
    from abi import registry

    header = spec_or_entry.header
    return f"{registry.PUBLIC}{header}" if header else "(no Xen header: pvhyp or x86)"


def _by_module(registry):
    structs, constants = defaultdict(list), defaultdict(list)
    for entry in registry.structs():
        structs[entry.module].append(entry)
    for entry in registry.constants():
        constants[entry.module].append(entry)
    return structs, constants


def _print_overview(registry, *, show_structs: bool) -> None:
    structs, constants = _by_module(registry)
    for spec, _ in registry.header_modules():
        print(f"{_header_label(spec):48} {spec.module:20} "
              f"{len(structs[spec.module]):3} structs {len(constants[spec.module]):4} constants")
        if show_structs:
            for entry in structs[spec.module]:
                print(f"    {entry.name:36} {entry.size:5} bytes  {_first_sentence(entry.docs)}")


def _first_sentence(text: str, width: int = 70) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 3] + "..."


def _print_name(registry, name: str) -> int:
    try:
        _print_struct(registry, registry.struct(name))
        return 0
    except KeyError:
        pass
    try:
        c = registry.constant(name)
    except KeyError:
        pass
    else:
        print(f"{c.name} = {c.value} ({_hex(c.value)})  {_header_label(c)}  [{c.module}]")
        if c.c_name is None:
            print(f"  not checked against a header: {c.why_unchecked}")
        return 0
    module_structs = [e for e in registry.structs() if e.header == name or e.module == name]
    if module_structs:
        for entry in module_structs:
            _print_struct(registry, entry)
            print()
        return 0
    raise UserError(f"abi: no struct, constant or header named {name!r}{_suggestion(registry, name)}")


def _suggestion(registry, name: str) -> str:
    known = [e.name for e in registry.structs()] + [c.name for c in registry.constants()]
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else " (`pvhyp abi` lists them)"


def _hex(value: int) -> str:
    return hex(value) if value >= 0 else f"-{hex(-value)}"


def _print_struct(registry, entry) -> None:
    print(f"{entry.c_type}: {entry.size} bytes, {_header_label(entry)} [{entry.module}]")
    if entry.docs:
        print(f"  {' '.join(entry.docs.split())}")
    rows = registry.fields(entry.construct, array_elements=False, include_padding=True)
    type_width = max([4] + [len(f.type_name) for f in rows])
    field_width = max([5] + [2 * f.depth + len(f.name) for f in rows])
    print(f"{'offset':>6} {'size':>5}  {'type':{type_width}}  {'field':{field_width}}  note")
    for f in rows:
        field = "  " * f.depth + f.name
        print(f"{f.offset:6} {f.size:5}  {f.type_name:{type_width}}  {field:{field_width}}  {f.note}".rstrip())


# --- json ---------------------------------------------------------------------------------
def _json_document(registry) -> dict:
    return {
        "structs": [
            {
                "name": e.name,
                "c_type": e.c_type,
                "header": e.header,
                "module": e.module,
                "size": e.size,
                "doc": e.docs,
                "fields": [
                    {"name": f.path, "offset": f.offset, "size": f.size, "type": f.type_name, "note": f.note}
                    for f in registry.fields(e.construct, array_elements=False)
                ],
            }
            for e in registry.structs()
        ],
        "constants": [
            {"name": c.name, "value": c.value, "header": c.header, "module": c.module,
             "checked": c.c_name is not None}
            for c in registry.constants()
        ],
    }


def _json_for_name(registry, document: dict, name: str) -> dict:
    for kind in ("structs", "constants"):
        for item in document[kind]:
            if item["name"] == name:
                return item
    raise UserError(f"abi: no struct or constant named {name!r}{_suggestion(registry, name)}")

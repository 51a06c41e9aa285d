"""`--trace FILE` lines: hypercalls with their sub-operation decoded by name (from abi), traps, events."""
from __future__ import annotations

from pvhyp.timeline.decode import subop_name
from pvhyp.trace import format_record

# The timeline's own records (pvhyp/timeline): drawn there, noise in a text trace.
TIMELINE_ONLY = frozenset({"run", "counter", "mm", "domain"})


def format_line(rec: dict) -> str:
    if rec.get("kind") == "hypercall" and "args" in rec:
        args = list(rec["args"])
        sub = subop_name(rec.get("name", ""), args[0]) if args else None
        shown = ", ".join([sub or hex(args[0])] + [hex(a) for a in args[1:]]) if args else ""
        rec = dict(rec)
        rec.pop("args")
        return (f"{rec.get('t', 0.0):12.6f} d{rec['dom']}v{rec['vcpu']} hypercall {rec.get('nr')} "
                f"{rec.get('name')}({shown}) = {rec.get('result')}")
    return format_record({k: hex(v) if k in _ADDRESS_FIELDS and isinstance(v, int) else v
                          for k, v in rec.items()})


_ADDRESS_FIELDS = {"rip", "handler", "cr2", "mfn", "addr", "error_code"}


def trace_to_file(trace, path: str, skip_domids=frozenset()) -> None:
    """Every record of the domains not in skip_domids, one line each, to `path` (line-buffered)."""
    f = open(path, "w", buffering=1)

    def sink(rec: dict) -> None:
        if rec["dom"] not in skip_domids and rec["kind"] not in TIMELINE_ONLY:
            f.write(format_line(rec) + "\n")

    trace.add_sink(sink)

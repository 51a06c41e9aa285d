"""`--trace FILE` lines: hypercalls with their sub-operation decoded by name (from abi), traps, events."""
from __future__ import annotations

from pvhyp.trace import format_record

# Hypercalls whose first argument is a command, and the abi prefix naming it.
_SUBOP_PREFIX = {
    "sched_op": ("abi.sched", "SCHEDOP_"), "event_channel_op": ("abi.event_channel", "EVTCHNOP_"),
    "memory_op": ("abi.memory", "XENMEM_"), "vcpu_op": ("abi.vcpu", "VCPUOP_"),
    "grant_table_op": ("abi.grant_table", "GNTTABOP_"), "physdev_op": ("abi.physdev", "PHYSDEVOP_"),
    "callback_op": ("abi.callback", "CALLBACKOP_"), "xen_version": ("abi.version", "XENVER_"),
    "console_io": ("abi.xen", "CONSOLEIO_"), "vm_assist": ("abi.xen", "VMASST_CMD_"),
}
_names_cache: dict[str, dict[int, str]] = {}


def subop_name(hypercall: str, cmd: int) -> str | None:
    spec = _SUBOP_PREFIX.get(hypercall)
    if spec is None:
        return None
    names = _names_cache.get(hypercall)
    if names is None:
        import importlib
        module = importlib.import_module(spec[0])
        names = {}
        for name in sorted(dir(module)):
            value = getattr(module, name)
            if name.startswith(spec[1]) and isinstance(value, int) and not isinstance(value, bool):
                names.setdefault(value, name)
        _names_cache[hypercall] = names
    if hypercall == "vcpu_op":
        cmd &= 0xFFFFFFFF
    return names.get(cmd)


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
        if rec["dom"] not in skip_domids:
            f.write(format_line(rec) + "\n")

    trace.add_sink(sink)

"""Names for a record's numbers, from abi: a hypercall's sub-operation, an errno, a trap vector.

One decoder for every reader of the trace (the text lines of `--trace FILE`,
the timeline's slices): the names are Xen's own, looked up in abi by prefix.
"""
from __future__ import annotations

import importlib

from abi.errno import ERRNO_NAMES

# Hypercalls whose first argument is a command, and the abi prefix naming it.
_SUBOP_PREFIX = {
    "sched_op": ("abi.sched", "SCHEDOP_"), "event_channel_op": ("abi.event_channel", "EVTCHNOP_"),
    "memory_op": ("abi.memory", "XENMEM_"), "vcpu_op": ("abi.vcpu", "VCPUOP_"),
    "grant_table_op": ("abi.grant_table", "GNTTABOP_"), "physdev_op": ("abi.physdev", "PHYSDEVOP_"),
    "callback_op": ("abi.callback", "CALLBACKOP_"), "xen_version": ("abi.version", "XENVER_"),
    "console_io": ("abi.xen", "CONSOLEIO_"), "vm_assist": ("abi.xen", "VMASST_CMD_"),
}
_names_cache: dict[str, dict[int, str]] = {}


def _names(module_name: str, prefix: str) -> dict[int, str]:
    key = module_name + ":" + prefix
    names = _names_cache.get(key)
    if names is None:
        module = importlib.import_module(module_name)
        names = {}
        for name in sorted(dir(module)):
            value = getattr(module, name)
            if name.startswith(prefix) and isinstance(value, int) and not isinstance(value, bool):
                names.setdefault(value, name)
        _names_cache[key] = names
    return names


def subop_name(hypercall: str, cmd: int) -> str | None:
    spec = _SUBOP_PREFIX.get(hypercall)
    if spec is None:
        return None
    if hypercall == "vcpu_op":
        cmd &= 0xFFFFFFFF
    return _names(*spec).get(cmd)


def result_name(result: object) -> str:
    """A hypercall's result as Xen's errno name ("-EINVAL"), or the number it is."""
    if isinstance(result, int) and result < 0 and -result in ERRNO_NAMES:
        return "-" + ERRNO_NAMES[-result]
    return str(result)


def trap_name(vector: int) -> str:
    name = _names("abi.x86_regs", "TRAP_").get(vector)
    return name[len("TRAP_"):] if name else f"vector {vector}"

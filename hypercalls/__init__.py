"""Hypercall handlers, one module per family, in Xen's shape.

Each handler copies its arguments in with `abi`, calls a mechanism in
`pvhyp`, copies results out, and returns Xen's result (-errno on error).
A module registers its handlers with `@hypercall("name")` (the short name of
`__HYPERVISOR_name` in abi/xen.py); `install(table)` imports every module of
this package and fills the hypervisor's table.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallTable

_Handler = TypeVar("_Handler", bound=Callable[..., Any])
_HANDLERS: dict[str, Callable[..., Any]] = {}


def hypercall(name: str) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        if name in _HANDLERS and _HANDLERS[name] is not fn:
            raise RuntimeError(f"two handlers for hypercall {name}")
        _HANDLERS[name] = fn
        return fn
    return register


def install(table: HypercallTable) -> None:
    from abi.xen import HYPERCALL_NUMBERS
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    for name, fn in _HANDLERS.items():
        table.register(HYPERCALL_NUMBERS[name], name, fn)

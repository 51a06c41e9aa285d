"""Quota settings and the XS_CONTROL request (privileged only).

Supported commands: "check" (tree consistency), "print <text>", "log on|off", "quota" (show),
"quota set <name> <value>", "quota <domid>" (usage) and "help".  Anything
else is EINVAL, as in cxenstored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

from abi.io.xs_wire import XENSTORE_REL_PATH_MAX

from .errors import XsError
from .paths import c_atoi
from .payload import OK, split_strings
from .store import View

if TYPE_CHECKING:  # the engine calls do_control; it only names the engine's types
    from .core import Connection, XenStore


@dataclass
class Quotas:
    """Per-domain limits, with cxenstored's defaults.  Privileged
    connections are exempt from all of them."""

    nodes: int = 1000  # nodes owned by a domain -> ENOSPC
    watches: int = 128  # watches registered by a domain -> E2BIG
    transactions: int = 10  # open transactions per connection -> ENOSPC
    outstanding: int = 20  # unsent replies before we stop reading requests
    transaction_nodes: int = 1024  # nodes touched by one transaction -> ENOSPC
    node_size: int = 2048  # stored record size of one node -> ENOSPC
    path_max: int = XENSTORE_REL_PATH_MAX  # path length below the domain's home -> EINVAL
    permissions: int = 5  # entries in one SET_PERMS -> ENOSPC
    memory: int = 2 * 1024 * 1024 + 512 * 1024  # queued output bytes; events beyond are dropped

    DESCRIPTIONS = {
        "nodes": "Nodes per domain",
        "watches": "Watches per domain",
        "transactions": "Transactions per domain",
        "outstanding": "Outstanding requests per domain",
        "transaction_nodes": "Max. number of accessed nodes per transaction",
        "node_size": "Max. size of a node",
        "path_max": "Max. length of a node path",
        "permissions": "Max. number of permissions per node",
        "memory": "Max. bytes of output queued for a domain",
    }

    @staticmethod
    def wire_name(field_name: str) -> str:
        return field_name.replace("_", "-")

    def show(self) -> str:
        lines = ["Quota settings:"]
        for field in fields(self):
            lines.append(f"{self.wire_name(field.name):<17}: {getattr(self, field.name):8d} "
                         f"{self.DESCRIPTIONS[field.name]}")
        return "\n".join(lines) + "\n"

    def set(self, wire_name: str, value: int) -> None:
        for field in fields(self):
            if self.wire_name(field.name) == wire_name:
                if field.name == "path_max":
                    value = min(value, XENSTORE_REL_PATH_MAX)
                setattr(self, field.name, value)
                return
        raise XsError("EINVAL")


def _reply_text(text: str) -> bytes:
    return text.encode() + b"\0"


def do_control(engine: XenStore, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if not strings:
        raise XsError("EINVAL")
    command = strings[0]
    args = strings[1:]
    handler = _COMMANDS.get(command)
    if handler is None:
        raise XsError("EINVAL")
    return handler(engine, args)


def _print(engine: XenStore, args: list[bytes]) -> bytes:
    if len(args) != 1:
        raise XsError("EINVAL")
    engine.log(f"control: {args[0].decode('utf-8', 'replace')}")
    return OK


def _log(engine: XenStore, args: list[bytes]) -> bytes:
    if args not in ([b"on"], [b"off"]):
        raise XsError("EINVAL")
    engine.trace_enabled = args[0] == b"on"
    return OK


def _quota(engine: XenStore, args: list[bytes]) -> bytes:
    if not args:
        return _reply_text(engine.quotas.show())
    if args[0] == b"set":
        if len(args) != 3:
            raise XsError("EINVAL")
        value = c_atoi(args[2])
        if value < 1 or value >= 1 << 31:
            raise XsError("EINVAL")
        engine.quotas.set(args[1].decode("ascii", "replace"), value)
        return OK
    if len(args) != 1:
        raise XsError("EINVAL")
    return _reply_text(engine.domain_usage(c_atoi(args[0])))


def _check(engine: XenStore, args: list[bytes]) -> bytes:
    problems = engine.store.inconsistencies()
    for problem in problems:
        engine.log(f"store check: {problem}")
    if problems:
        raise XsError("EIO")
    return OK


def _help(engine: XenStore, args: list[bytes]) -> bytes:
    return _reply_text("Available commands:\n" + "\n".join(
        name.decode() for name in _COMMANDS) + "\n")


_COMMANDS: dict[bytes, Callable[[XenStore, list[bytes]], bytes]] = {
    b"check": _check, b"print": _print, b"log": _log, b"quota": _quota,
    b"help": _help}

"""The XS_CONTROL request (privileged only).

Supported commands: "check" (tree consistency), "print <text>", "log on|off", "quota" (show),
"quota set <name> <value>", "quota <domid>" (usage) and "help".  Anything
else is EINVAL, as in cxenstored.
"""

from __future__ import annotations

from typing import Callable

from .core import Connection, Engine
from .errors import XsError
from .paths import c_atoi
from .payload import OK, split_strings
from .store import View


def _reply_text(text: str) -> bytes:
    return text.encode() + b"\0"


def do_control(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if not strings:
        raise XsError("EINVAL")
    command = strings[0]
    args = strings[1:]
    handler = _COMMANDS.get(command)
    if handler is None:
        raise XsError("EINVAL")
    return handler(engine, args)


def _print(engine: Engine, args: list[bytes]) -> bytes:
    if len(args) != 1:
        raise XsError("EINVAL")
    engine.log(f"control: {args[0].decode('utf-8', 'replace')}")
    return OK


def _log(engine: Engine, args: list[bytes]) -> bytes:
    if args not in ([b"on"], [b"off"]):
        raise XsError("EINVAL")
    engine.trace_enabled = args[0] == b"on"
    return OK


def _quota(engine: Engine, args: list[bytes]) -> bytes:
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


def _check(engine: Engine, args: list[bytes]) -> bytes:
    problems = engine.store.inconsistencies()
    for problem in problems:
        engine.log(f"store check: {problem}")
    if problems:
        raise XsError("EIO")
    return OK


def _help(engine: Engine, args: list[bytes]) -> bytes:
    return _reply_text("Available commands:\n" + "\n".join(
        name.decode() for name in _COMMANDS) + "\n")


_COMMANDS: dict[bytes, Callable[[Engine, list[bytes]], bytes]] = {
    b"check": _check, b"print": _print, b"log": _log, b"quota": _quota,
    b"help": _help}

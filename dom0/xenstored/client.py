"""In-process dom0 client of the engine, for the toolstack living in the
same process as xenstored (no socket round trip).

    store = XenStore()
    xs = LocalClient(store)
    xs.write("/local/domain/5/name", b"guest")
    xs.set_perms("/local/domain/5", ["n5", "r0"])
    with xs.transaction() as tx:
        tx.write("/vm/5/memory", b"512")

Errors raise XsError (its ``name`` is the errno name); watch events for
this client's own watches are collected by ``take_events``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from abi.io import xs_wire as wire

from .core import Engine, parse_messages
from .errors import XsError
from .payload import split_strings


class LocalClient:
    def __init__(self, engine: Engine, domid: int = 0, tx_id: int = 0,
                 conn_id: int | None = None) -> None:
        self.engine = engine
        with engine.lock:
            self.conn_id = engine.open_connection(domid) if conn_id is None else conn_id
        self.tx_id = tx_id

    def _call(self, msg_type: int, payload: bytes) -> bytes:
        with self.engine.lock:
            reply_type, reply = self.engine.request(self.conn_id, msg_type, payload, self.tx_id)
        if reply_type == wire.XS_ERROR:
            raise XsError(reply.rstrip(b"\0").decode("ascii", "replace"))
        return reply

    @staticmethod
    def _args(*args: str | bytes) -> bytes:
        return b"".join((a.encode() if isinstance(a, str) else a) + b"\0" for a in args)

    def read(self, path: str) -> bytes | None:
        try:
            return self._call(wire.XS_READ, self._args(path))
        except XsError as error:
            if error.name == "ENOENT":
                return None
            raise

    def write(self, path: str, value: bytes | str) -> None:
        value = value.encode() if isinstance(value, str) else value
        self._call(wire.XS_WRITE, self._args(path) + value)

    def mkdir(self, path: str) -> None:
        self._call(wire.XS_MKDIR, self._args(path))

    def rm(self, path: str) -> None:
        self._call(wire.XS_RM, self._args(path))

    def directory(self, path: str) -> list[str]:
        return [name.decode() for name in split_strings(self._call(wire.XS_DIRECTORY,
                                                                   self._args(path)))]

    def get_perms(self, path: str) -> list[str]:
        return [p.decode() for p in split_strings(self._call(wire.XS_GET_PERMS, self._args(path)))]

    def set_perms(self, path: str, perms: list[str]) -> None:
        self._call(wire.XS_SET_PERMS, self._args(path, *perms))

    def watch(self, path: str, token: str | bytes) -> None:
        self._call(wire.XS_WATCH, self._args(path, token))

    def unwatch(self, path: str, token: str | bytes) -> None:
        self._call(wire.XS_UNWATCH, self._args(path, token))

    def take_events(self) -> list[tuple[bytes, bytes]]:
        """Watch events queued for this client, as (path, token)."""
        with self.engine.lock:
            data = self.engine.data_to_send(self.conn_id)
        events = []
        for msg_type, _, _, payload in parse_messages(data):
            if msg_type == wire.XS_WATCH_EVENT:
                path, token = split_strings(payload)[:2]
                events.append((path, token))
        return events

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LocalClient]:
        """Commit on normal exit, abort on exception; EAGAIN propagates as
        XsError for the caller to retry."""
        tx_id = int(self._call(wire.XS_TRANSACTION_START, b"\0").rstrip(b"\0"))
        tx = LocalClient(self.engine, tx_id=tx_id, conn_id=self.conn_id)
        try:
            yield tx
        except BaseException:
            with self.engine.lock:
                self.engine.request(self.conn_id, wire.XS_TRANSACTION_END, b"F\0", tx_id)
            raise
        tx._call(wire.XS_TRANSACTION_END, b"T\0")

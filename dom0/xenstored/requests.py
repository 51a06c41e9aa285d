"""XenStore: the engine (core.Engine) with xenstored's request table.

Every request type of Xen 4.17's xs_wire.h has its handler: the node
requests are in nodes.py, the domain requests in domains.py, XS_CONTROL in
control.py; the watch and transaction requests, which work on the requesting
connection itself, are here.
"""

from __future__ import annotations

from typing import Callable

from abi.io import xs_wire as wire

from . import domains, nodes
from .control import do_control
from .core import NO_TX, PRIV, Connection, Engine, Handler, Watch
from .errors import XsError
from .payload import OK, exactly_one_string, split_strings
from .quotas import Quotas
from .store import Transaction, View


def _do_watch(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if len(strings) != 2:
        raise XsError("EINVAL")
    raw_path, token = strings
    if raw_path.startswith(b"@"):
        if len(raw_path) > wire.XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL")
        path, prefix = raw_path, None
    else:
        path = nodes.canonical_path(engine, conn, raw_path).encode()
        prefix = None if raw_path.startswith(b"/") else conn.home_path.encode()
    if any(w.path == path and w.token == token for w in conn.watches):
        raise XsError("EEXIST")
    if not conn.privileged and engine.domain_watch_count(conn.domid) >= engine.quotas.watches:
        raise XsError("E2BIG")
    watch = Watch(path, token, prefix)
    conn.watches.append(watch)
    # The first event must follow the OK reply, not precede it.
    engine.queue_after_reply(conn, watch.event_path(path), token)
    return OK


def _do_unwatch(engine: Engine, conn: Connection, view: View, payload: bytes) -> bytes:
    strings = split_strings(payload)
    if len(strings) != 2:
        raise XsError("EINVAL")
    raw_path, token = strings
    if not raw_path.startswith((b"/", b"@")):
        raw_path = conn.home_path.encode() + b"/" + raw_path
    for index, watch in enumerate(conn.watches):
        if watch.path == raw_path and watch.token == token:
            del conn.watches[index]
            return OK
    raise XsError("ENOENT")


def _do_transaction_start(engine: Engine, conn: Connection, view: View,
                          payload: bytes) -> bytes:
    if isinstance(view, Transaction):
        raise XsError("EBUSY")  # no nesting
    if not conn.privileged and len(conn.transactions) >= engine.quotas.transactions:
        raise XsError("ENOSPC")
    while conn.next_tx_id == 0 or conn.next_tx_id in conn.transactions:
        conn.next_tx_id = (conn.next_tx_id + 1) & 0xFFFFFFFF
    tx_id = conn.next_tx_id
    conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
    limit = None if conn.privileged else engine.quotas.transaction_nodes
    conn.transactions[tx_id] = Transaction(engine.store, tx_id, limit)
    return str(tx_id).encode() + b"\0"


def _do_transaction_end(engine: Engine, conn: Connection, view: View,
                        payload: bytes) -> bytes:
    verdict = exactly_one_string(payload)
    if verdict not in (b"T", b"F"):
        raise XsError("EINVAL")
    if not isinstance(view, Transaction):
        raise XsError("ENOENT")
    del conn.transactions[view.tx_id]  # gone whatever the outcome
    if verdict == b"T":
        if (not conn.privileged and view.creates_nodes()
                and view.owned_count(conn.domid) > engine.quotas.nodes):
            raise XsError("ENOSPC")
        view.commit()
        for path, exact, perms, old_perms in view.pending_watch_events:
            engine.fire_watches(engine.store, path, exact, perms, old_perms)
    return OK


def _do_reset_watches(engine: Engine, conn: Connection, view: View,
                      payload: bytes) -> bytes:
    conn.watches.clear()
    conn.transactions.clear()
    return OK


_HANDLERS: dict[int, tuple[Handler, int]] = {
    wire.XS_CONTROL: (do_control, PRIV),
    wire.XS_DIRECTORY: (nodes.do_directory, 0),
    wire.XS_READ: (nodes.do_read, 0),
    wire.XS_GET_PERMS: (nodes.do_get_perms, 0),
    wire.XS_WATCH: (_do_watch, NO_TX),
    wire.XS_UNWATCH: (_do_unwatch, NO_TX),
    wire.XS_TRANSACTION_START: (_do_transaction_start, 0),
    wire.XS_TRANSACTION_END: (_do_transaction_end, 0),
    wire.XS_INTRODUCE: (domains.do_introduce, PRIV),
    wire.XS_RELEASE: (domains.do_release, PRIV),
    wire.XS_GET_DOMAIN_PATH: (domains.do_get_domain_path, 0),
    wire.XS_WRITE: (nodes.do_write, 0),
    wire.XS_MKDIR: (nodes.do_mkdir, 0),
    wire.XS_RM: (nodes.do_rm, 0),
    wire.XS_SET_PERMS: (nodes.do_set_perms, 0),
    wire.XS_IS_DOMAIN_INTRODUCED: (domains.do_is_domain_introduced, PRIV),
    wire.XS_RESUME: (domains.do_resume, PRIV),
    wire.XS_SET_TARGET: (domains.do_set_target, PRIV),
    wire.XS_RESET_WATCHES: (_do_reset_watches, 0),
    wire.XS_DIRECTORY_PART: (nodes.do_directory_part, 0),
}


class XenStore(Engine):
    """xenstored's engine: ``Engine`` answering with the table above, its tree
    holding /tool/xenstored from the start as cxenstored's does."""

    HANDLERS = _HANDLERS

    def __init__(self, quotas: Quotas | None = None, priv_domid: int | None = None,
                 introduce_hook: Callable[[int, int, int], None] | None = None,
                 release_hook: Callable[[int], None] | None = None) -> None:
        super().__init__(quotas, priv_domid, introduce_hook, release_hook)
        root = Connection(0, 0, True, False)
        for path in ("/tool", "/tool/xenstored"):
            nodes.do_mkdir(self, root, self.store, path.encode() + b"\0")

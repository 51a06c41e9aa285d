"""Sans-IO xenstore engine: bytes in, bytes out, no sockets, no rings.

The engine owns the node store and one ``Connection`` per client.  A
transport (ring.py, unix_socket.py, or a test) moves bytes:

    engine = XenStore()          # requests.XenStore: an Engine with xenstored's handlers
    conn_id = engine.open_connection(domid=0)      # a dom0 tool
    engine.feed(conn_id, request_bytes)
    reply_bytes = engine.data_to_send(conn_id, max_bytes)
    engine.take_dirty()  # ids whose output grew (watch events for others)

Rules of the state machine
--------------------------
* Input is buffered per connection and cut into messages: a 16-byte
  ``xsd_sockmsg`` header, then ``len`` payload bytes.  A header announcing
  more than XENSTORE_PAYLOAD_MAX bytes is a protocol violation: the
  connection becomes *broken* (``conn.broken`` holds the ring error code),
  its watches and transactions are dropped and all further input is
  ignored.  Transports reset or close broken connections.
* Each complete message is answered, in order, by exactly one reply with
  the same req_id and tx_id: either the request's type with its result, or
  XS_ERROR with an errno name.  Unknown types get ENOSYS; privileged-only
  types from unprivileged domains get EACCES; a non-zero tx_id that names no
  open transaction of this connection gets ENOENT.
* Watch events (XS_WATCH_EVENT, req_id 0) are queued on the watcher's
  connection whenever a matching node changes, and once right after a
  successful XS_WATCH.  An identical event still waiting to be sent is not
  queued twice.  Changes made inside a transaction fire on commit only.
* Unprivileged connections (domains other than 0 and ``priv_domid``) stop
  being read while ``quotas.outstanding`` replies are waiting to be taken
  with ``data_to_send``; the rest of their input stays buffered.
* Closing a connection drops its watches and transactions.  Nothing here
  raises on peer input: hostile bytes produce error replies or a broken
  connection.

The engine itself is single-threaded.  Code that drives it from more than
one thread holds ``engine.lock`` around each call (the transports and
LocalClient do); ``engine.wakeup``, if set, is called whenever some
connection gains output while none had any pending, so an event loop in
another thread can come and move the bytes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol

from abi.io import xs_wire as wire

from .errors import ProtocolViolation, XsError
from .paths import (
    PERM_NONE,
    PERM_OWNER,
    PERM_READ,
    PERM_WRITE,
    Permission,
    Perms,
    domain_path,
    is_same_or_below,
    parent_of,
)
from .quotas import Quotas
from .store import Node, Store, Transaction, View

_HEADER = wire.XSD_SOCKMSG_SIZE
SPECIAL_WATCHES = (b"@introduceDomain", b"@releaseDomain")

log = logging.getLogger("dom0.xenstored")


@dataclass
class Watch:
    path: bytes  # absolute node name, or a special "@..." name
    token: bytes
    relative_prefix: bytes | None  # home path stripped from event paths

    def event_path(self, changed: bytes) -> bytes:
        if self.relative_prefix is None:
            return changed
        rest = changed[len(self.relative_prefix):]
        return rest[1:] if rest.startswith(b"/") else rest


@dataclass
class _Outgoing:
    data: bytes
    is_reply: bool  # replies count against the outstanding quota, events don't
    event_key: bytes | None = None  # payload of a watch event, for de-duplication


@dataclass
class Connection:
    id: int
    domid: int
    privileged: bool
    is_domain: bool  # a guest's ring (True) or a dom0 tool (False)
    target_domid: int | None = None
    watches: list[Watch] = field(default_factory=list)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx_id: int = 1
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: collections.deque[_Outgoing] = field(default_factory=collections.deque)
    out_offset: int = 0  # bytes of outbuf[0] already handed out
    out_bytes: int = 0  # total queued output, bounded for guests by quotas.memory
    pending_events: collections.Counter[bytes] = field(default_factory=collections.Counter)
    outstanding: int = 0
    broken: int | None = None  # XENSTORE_ERROR_* once the peer broke framing
    closed: bool = False

    @property
    def home_path(self) -> str:
        return domain_path(self.domid)


@dataclass
class IntroducedDomain:
    """A guest introduced with XS_INTRODUCE: its ring's one connection, where the ring is."""

    domid: int
    conn_id: int
    gfn: int
    port: int
    shutdown: bool = False


def access_for(conn: Connection, perms: Perms) -> int:
    """Access bits ``conn`` has on a node with ``perms`` (Xen's rules).

    Privileged connections and the owner get everything; a domain acting on
    behalf of a target (XS_SET_TARGET) is treated like the target.  Otherwise
    the first ACL entry naming the domain (or its target) applies, and
    perms[0]'s access is the default for everyone else.
    """
    target = conn.target_domid
    owner = perms[0].domid
    if conn.privileged or owner == conn.domid or (target is not None and owner == target):
        return PERM_READ | PERM_WRITE | PERM_OWNER
    for entry in perms[1:]:
        if entry.domid == conn.domid or (target is not None and entry.domid == target):
            return entry.access
    return perms[0].access


def live_perms(engine: Engine, node: Node) -> Perms:
    """The node's permissions minus ACL entries that must be ignored.

    An entry naming a domain only counts if that domain was known to the
    store (introduced, or named in a SET_PERMS) before the node was last
    written.  This stops a new domain that reuses the domid of a dead one
    from inheriting the dead domain's grants.  perms[0], the owner, is kept
    as Xen 4.17 does."""
    births = engine.domain_birth
    kept = tuple(entry for entry in node.perms[1:]
                 if births.get(entry.domid, node.generation + 1) <= node.generation)
    return node.perms if len(kept) == len(node.perms) - 1 else node.perms[:1] + kept


class RequestObserver(Protocol):
    """Sees every request answered (the timeline's xenstored track, dom0.timeline): a clock of its
    own, so the engine stays free of time."""

    def now(self) -> float: ...

    def request(self, domid: int, msg_type: int, payload: bytes, reply_type: int, reply: bytes,
                started: float) -> None: ...


def encode_message(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    header: bytes = wire.xsd_sockmsg.build(dict(type=msg_type, req_id=req_id, tx_id=tx_id,
                                                len=len(payload)))
    return header + payload


def parse_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, req_id, tx_id, payload) of each complete message in ``data``;
    a trailing partial message is ignored.  For trusted output only."""
    messages: list[tuple[int, int, int, bytes]] = []
    offset = 0
    while len(data) - offset >= _HEADER:
        header = wire.xsd_sockmsg.parse(data[offset:offset + _HEADER])
        end = offset + _HEADER + header.len
        if end > len(data):
            break
        messages.append((header.type, header.req_id, header.tx_id, data[offset + _HEADER:end]))
        offset = end
    return messages


NO_TX = 1  # a handler flag: the request's tx_id field is not looked at
PRIV = 2  # a handler flag: privileged connections only

# A request handler: (engine, requesting connection, view, payload) -> reply payload, or XsError.
Handler = Callable[["Engine", Connection, View, bytes], bytes]


class Engine:
    """The whole xenstore state.  See the module docstring for the rules.

    Requests are answered by ``HANDLERS``: message type -> (handler, NO_TX |
    PRIV flags).  requests.XenStore is the engine with xenstored's table;
    the handlers take the engine as their first argument, so they import
    this module and it imports none of them."""

    HANDLERS: ClassVar[dict[int, tuple[Handler, int]]] = {}

    def __init__(self, quotas: Quotas | None = None, priv_domid: int | None = None,
                 introduce_hook: Callable[[int, int, int], None] | None = None,
                 release_hook: Callable[[int], None] | None = None) -> None:
        """``introduce_hook(domid, gfn, port)`` carries out an XS_INTRODUCE
        request: it maps the ring, binds the event channel and calls
        ``introduce_domain``, or raises XsError to refuse.  Without a hook
        the domain is registered with no transport attached.
        ``release_hook(domid)`` is called after a domain's connection ended."""
        self.quotas = quotas or Quotas()
        self.priv_domid = priv_domid
        self.introduce_hook = introduce_hook
        self.release_hook = release_hook
        self.trace_enabled = False
        self.request_observer: RequestObserver | None = None
        self.lock = threading.RLock()
        self.wakeup: Callable[[], None] | None = None
        self.store = Store((Permission(0, PERM_NONE),))
        self.special_perms: dict[bytes, Perms] = {name: (Permission(0, PERM_NONE),)
                                                  for name in SPECIAL_WATCHES}
        self.connections: dict[int, Connection] = {}
        self.domains: dict[int, IntroducedDomain] = {}
        self._ids = itertools.count(1)
        self._dirty: set[int] = set()
        self._after_reply: list[tuple[Connection, bytes, bytes]] = []
        # Store generation at which each known domain came into being; see
        # live_perms.  dom0 and the privileged domain always exist.
        self.domain_birth: dict[int, int] = {0: 0}
        if priv_domid is not None:
            self.domain_birth[priv_domid] = 0

    # -- connections ---------------------------------------------------------

    def is_privileged_domid(self, domid: int) -> bool:
        return domid == 0 or domid == self.priv_domid

    def open_connection(self, domid: int = 0, is_domain: bool = False) -> int:
        conn_id = next(self._ids)
        self.connections[conn_id] = Connection(conn_id, domid, self.is_privileged_domid(domid),
                                               is_domain)
        return conn_id

    def close_connection(self, conn_id: int) -> None:
        conn = self.connections.pop(conn_id, None)
        if conn is None:
            return
        conn.closed = True
        self._drop_state(conn)
        self._dirty.discard(conn_id)

    @staticmethod
    def _drop_state(conn: Connection) -> None:
        conn.watches.clear()
        conn.transactions.clear()
        conn.inbuf.clear()

    def reset_connection(self, conn_id: int) -> None:
        """Forget a connection's watches, transactions and buffers, keeping
        the connection itself (used when a domain is re-introduced)."""
        conn = self.connections[conn_id]
        self._drop_state(conn)
        conn.outbuf.clear()
        conn.pending_events.clear()
        conn.out_offset = conn.outstanding = conn.out_bytes = 0
        conn.broken = None

    # -- bytes in, bytes out ---------------------------------------------

    def feed(self, conn_id: int, data: bytes) -> None:
        conn = self.connections.get(conn_id)
        if conn is None or conn.broken is not None:
            return
        conn.inbuf += data
        self._process_input(conn)

    def data_to_send(self, conn_id: int, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of queued output (replies and events, in order)."""
        conn = self.connections.get(conn_id)
        if conn is None:
            return b""
        chunks: list[bytes] = []
        budget = max_bytes if max_bytes is not None else 1 << 62
        while conn.outbuf and budget > 0:
            head = conn.outbuf[0]
            piece = head.data[conn.out_offset:conn.out_offset + budget]
            chunks.append(piece)
            budget -= len(piece)
            conn.out_offset += len(piece)
            if conn.out_offset == len(head.data):
                conn.out_offset = 0
                self._unqueue(conn, 0)
        self._process_input(conn)  # replies drained: input may flow again
        return b"".join(chunks)

    def has_output(self, conn_id: int) -> bool:
        conn = self.connections.get(conn_id)
        return bool(conn and conn.outbuf)

    def take_dirty(self) -> set[int]:
        """Connections that gained output since the last call."""
        dirty, self._dirty = self._dirty, set()
        return {conn_id for conn_id in dirty if conn_id in self.connections}

    def _process_input(self, conn: Connection) -> None:
        while conn.broken is None and not conn.closed:
            if not conn.privileged and conn.outstanding >= self.quotas.outstanding:
                return
            if len(conn.inbuf) < _HEADER:
                return
            header = wire.xsd_sockmsg.parse(bytes(conn.inbuf[:_HEADER]))
            if header.len > wire.XENSTORE_PAYLOAD_MAX:
                self._break(conn, ProtocolViolation(wire.XENSTORE_ERROR_PROTO))
                return
            if len(conn.inbuf) < _HEADER + header.len:
                return
            payload = bytes(conn.inbuf[_HEADER:_HEADER + header.len])
            del conn.inbuf[:_HEADER + header.len]
            self._handle_message(conn, header.type, header.req_id, header.tx_id, payload)

    def _break(self, conn: Connection, violation: ProtocolViolation) -> None:
        log.warning("connection %d (domain %d) broken: %s", conn.id, conn.domid, violation)
        self._drop_state(conn)
        conn.broken = violation.ring_error
        self._dirty.add(conn.id)

    def break_connection(self, conn_id: int, ring_error: int) -> None:
        """Transports report transport-level violations (bad ring indexes)."""
        conn = self.connections.get(conn_id)
        if conn is not None and conn.broken is None:
            self._break(conn, ProtocolViolation(ring_error))

    def _queue(self, conn: Connection, item: _Outgoing) -> None:
        conn.outbuf.append(item)
        conn.out_bytes += len(item.data)
        if item.is_reply:
            conn.outstanding += 1
        if item.event_key is not None:
            conn.pending_events[item.event_key] += 1
        was_idle = not self._dirty
        self._dirty.add(conn.id)
        if was_idle and self.wakeup is not None:
            self.wakeup()

    @staticmethod
    def _unqueue(conn: Connection, index: int) -> _Outgoing:
        item = conn.outbuf[index]
        del conn.outbuf[index]
        conn.out_bytes -= len(item.data)
        if item.is_reply:
            conn.outstanding -= 1
        if item.event_key is not None:
            conn.pending_events[item.event_key] -= 1
            if not conn.pending_events[item.event_key]:
                del conn.pending_events[item.event_key]
        return item

    def _handle_message(self, conn: Connection, msg_type: int, req_id: int, tx_id: int,
                        payload: bytes) -> None:
        self._after_reply = []
        observer = self.request_observer
        started = observer.now() if observer is not None else 0.0
        try:
            reply_type, reply = msg_type, self._dispatch(conn, msg_type, tx_id, payload)
            if len(reply) > wire.XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG")
        except XsError as error:
            reply_type, reply = wire.XS_ERROR, error.name.encode() + b"\0"
            self._after_reply = []
        except Exception:  # an engine bug must not take the daemon down
            log.exception("request type %d from connection %d failed", msg_type, conn.id)
            reply_type, reply = wire.XS_ERROR, b"EIO\0"
            self._after_reply = []
        if self.trace_enabled:
            log.info("conn %d type %d -> %d %r", conn.id, msg_type, reply_type, reply[:64])
        if observer is not None:
            observer.request(conn.domid, msg_type, payload, reply_type, reply, started)
        self._queue(conn, _Outgoing(encode_message(reply_type, req_id, tx_id, reply), True))
        for target, path, token in self._after_reply:
            self.queue_watch_event(target, path, token)
        self._after_reply = []

    def _dispatch(self, conn: Connection, msg_type: int, tx_id: int, payload: bytes) -> bytes:
        entry = self.HANDLERS.get(msg_type)
        if entry is None:
            raise XsError("ENOSYS")
        handler, flags = entry
        if flags & PRIV and not conn.privileged:
            raise XsError("EACCES")
        view: View = self.store
        if not flags & NO_TX and tx_id != 0:
            transaction = conn.transactions.get(tx_id)
            if transaction is None:
                raise XsError("ENOENT")
            view = transaction
        return handler(self, conn, view, payload)

    # -- watches -----------------------------------------------------------

    def queue_after_reply(self, conn: Connection, path: bytes, token: bytes) -> None:
        """Queue a watch event behind the reply to the request in progress
        (dropped if that request fails)."""
        self._after_reply.append((conn, path, token))

    def queue_watch_event(self, conn: Connection, path: bytes, token: bytes) -> None:
        payload = path + b"\0" + token + b"\0"
        if len(payload) > wire.XENSTORE_PAYLOAD_MAX or conn.broken is not None:
            return
        if not path.startswith(b"@") and payload in conn.pending_events:
            return
        data = encode_message(wire.XS_WATCH_EVENT, 0, 0, payload)
        if not conn.privileged and conn.out_bytes + len(data) > self.quotas.memory:
            # Like cxenstored over its memory quota: the event is lost, the
            # guest that stopped reading its ring pays for it.
            log.debug("dropping watch event for connection %d: output quota", conn.id)
            return
        self._queue(conn, _Outgoing(data, False, payload))

    def fire_watches(self, view: View, path: str, exact: bool,
                     perms: Perms | None = None, old_perms: Perms | None = None) -> None:
        """Queue events for every watch covering a change to ``path``.

        ``exact`` limits it to watches on ``path`` itself (used for nodes
        below the root of a removal).  A watcher must be able to read the
        node (before or after a permission change) or its parent."""
        if isinstance(view, Transaction):
            view.queue_watch_event(path, exact, perms, old_perms)
            return
        current = self.store.get(path)
        if perms is None and current is not None:
            perms = live_perms(self, current)
        parent = self.store.get(parent_of(path)) if path != "/" else None
        encoded = path.encode()
        for conn in list(self.connections.values()):
            matching = [w for w in conn.watches
                        if (w.path == encoded if exact
                            else is_same_or_below(path, w.path.decode("ascii", "replace")))
                        and not w.path.startswith(b"@")]
            if not matching:
                continue
            candidates = [p for p in (old_perms, perms,
                                      live_perms(self, parent) if parent else None) if p]
            if not any(access_for(conn, p) & PERM_READ for p in candidates):
                continue
            for watch in matching:
                self.queue_watch_event(conn, watch.event_path(encoded), watch.token)

    def fire_special(self, name: bytes) -> None:
        perms = self.special_perms[name]
        for conn in list(self.connections.values()):
            if not access_for(conn, perms) & PERM_READ:
                continue
            for watch in conn.watches:
                if watch.path == name:
                    self.queue_watch_event(conn, name, watch.token)

    def set_special_perms(self, conn: Connection, name: bytes, perms: Perms) -> None:
        current = self.special_perms.get(name)
        if current is None:
            raise XsError("EINVAL")
        needed = PERM_WRITE | PERM_OWNER
        if access_for(conn, current) & needed != needed:
            raise XsError("EACCES")
        self.special_perms[name] = perms

    def note_domains(self, perms: Perms) -> None:
        """Domains named in permissions start to exist for ACL purposes."""
        for entry in perms:
            self.domain_birth.setdefault(entry.domid, self.store.generation)

    def forget_domain(self, domid: int) -> None:
        """A domain died: its ACL entries stop counting everywhere."""
        if self.is_privileged_domid(domid):
            return
        self.domain_birth.pop(domid, None)
        for name, perms in self.special_perms.items():
            self.special_perms[name] = perms[:1] + tuple(p for p in perms[1:] if p.domid != domid)

    def domain_watch_count(self, domid: int) -> int:
        return sum(len(c.watches) for c in self.connections.values() if c.domid == domid)

    # -- domains (the toolstack's calls; the wire requests are in domains.py) ----

    def introduce_domain(self, domid: int, gfn: int = 0, port: int = 0) -> int:
        """Register a guest's ring connection; return its connection id.

        Re-introducing a known domain keeps its connection but forgets its
        watches, transactions and buffered bytes (the guest reconnects).
        Introducing a domain other than dom0 fires @introduceDomain."""
        known = self.domains.get(domid)
        if known is not None:
            known.port, known.gfn = port, gfn
            self.reset_connection(known.conn_id)
            return known.conn_id
        self.domain_birth.setdefault(domid, self.store.generation)
        conn_id = self.open_connection(domid, is_domain=True)
        self.domains[domid] = IntroducedDomain(domid, conn_id, gfn, port)
        if domid != 0:
            self.fire_special(b"@introduceDomain")
        return conn_id

    def release_domain(self, domid: int) -> None:
        """Forget a domain and its connection, then tell @releaseDomain watchers.

        Its nodes stay: removing /local/domain/<domid> is the toolstack's job."""
        domain = self.domains.pop(domid, None)
        if domain is None:
            raise XsError("ENOENT")
        self.close_connection(domain.conn_id)
        self.forget_domain(domid)
        for conn in self.connections.values():
            if conn.target_domid == domid:
                conn.target_domid = None
        self.fire_special(b"@releaseDomain")
        if self.release_hook is not None:
            self.release_hook(domid)

    def mark_domain_shutdown(self, domid: int) -> None:
        """The hypervisor reported the domain shut down or crashed."""
        domain = self.domains.get(domid)
        if domain is not None and not domain.shutdown:
            domain.shutdown = True
            self.fire_special(b"@releaseDomain")

    def domain_usage(self, domid: int) -> str:
        """What an introduced domain holds against its quotas (XS_CONTROL "quota <domid>")."""
        domain = self.domains.get(domid)
        if domain is None:
            raise XsError("ENOENT")
        conn = self.connections[domain.conn_id]
        rows = (("nodes", self.store.owned_count(domid)),
                ("watches", len(conn.watches)),
                ("transactions", len(conn.transactions)),
                ("outstanding", conn.outstanding))
        return f"Domain {domid}:\n" + "".join(f"{name:<16}: {value:8d}\n" for name, value in rows)

    def log(self, message: str) -> None:
        log.info("%s", message)

    # -- in-process requests -------------------------------------------------

    def request(self, conn_id: int, msg_type: int, payload: bytes, tx_id: int = 0,
                req_id: int = 0) -> tuple[int, bytes]:
        """Run one request synchronously on an otherwise idle connection and
        return (reply type, reply payload).  Queued watch events are left in
        the connection's output for ``data_to_send``."""
        conn = self.connections[conn_id]
        before = len(conn.outbuf)
        self._handle_message(conn, msg_type, req_id, tx_id, payload)
        # Exactly one reply was queued; watch events may surround it.
        index = next(i for i in range(before, len(conn.outbuf)) if conn.outbuf[i].is_reply)
        reply = self._unqueue(conn, index)
        header = wire.xsd_sockmsg.parse(reply.data[:_HEADER])
        return header.type, reply.data[_HEADER:]

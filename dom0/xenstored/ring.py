"""Ring transport: serves guests through their shared xenstore page.

The page is a ``struct xenstore_domain_interface`` that the guest can write
at any moment; its two byte rings are pvguest.ring's ``ByteRing``, which
reads every index once per operation, validates it (``prod - cons`` must not
exceed the ring size, modulo 2**32) and then only ever uses it masked.  A
guest whose indexes are impossible has its connection
marked broken with XENSTORE_ERROR_RINGIDX written to the page's ``error``
field, and is ignored from then on (until it asks for a reconnect or is
re-introduced); nothing a guest writes can raise or index out of bounds.

Usage by the toolstack:

    rings = RingServer(engine)
    conn_id = rings.introduce(domid, page_memoryview, notify_callable)
    ...
    rings.kick(domid)   # the domain's xenstore event channel fired
    rings.flush()       # after other transports queued watch events
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from abi.io import xs_wire as wire
from pvguest.ring import ByteRing, RingError, xenstore_rings

from .core import Connection, Engine
from .errors import XsError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("dom0.xenstored.ring")

# Never buffer more than one maximal message per guest: beyond that, the
# bytes stay in the guest's ring, which is the guest's problem.
_MAX_BUFFERED = wire.XSD_SOCKMSG_SIZE + wire.XENSTORE_PAYLOAD_MAX
# A guest runs concurrently and could keep its ring busy forever; one kick
# moves at most this many ring-fulls each way, the next kick or the
# daemon's periodic pass does the rest.
_MAX_ROUNDS_PER_KICK = 16


# page_mapper(domid, gfn, port) -> (the guest's ring page, its event-channel kick)
PageMapper = Callable[[int, int, int], tuple["WriteableBuffer", Callable[[], None]]]


@dataclass
class _Ring:
    domid: int
    conn_id: int
    page: memoryview
    notify: Callable[[], None]
    requests: ByteRing  # the guest produces, we consume
    replies: ByteRing  # we produce, the guest consumes

    # The guest reads the page's words while we write them: one aligned store each,
    # through the rings' view of the whole page (pvguest.ring / abi.shared_memory).
    def load(self, offset: int) -> int:
        return self.requests.words.load_u32(offset)

    def store(self, offset: int, value: int) -> None:
        self.requests.words.store_u32(offset, value)


class RingServer:
    """Moves bytes between guests' ring pages and the engine."""

    def __init__(self, engine: Engine, page_mapper: PageMapper | None = None) -> None:
        """``page_mapper(domid, gfn, port) -> (memoryview, notify)`` maps a
        guest's page for XS_INTRODUCE requests arriving over the wire; it may
        raise XsError to refuse.  Without it, wire introductions are refused
        (the toolstack calls ``introduce`` directly instead)."""
        self.engine = engine
        self.page_mapper = page_mapper
        self.rings: dict[int, _Ring] = {}  # by domid
        engine.introduce_hook = self._introduce_from_wire
        engine.release_hook = self._forget

    # -- domain lifecycle ----------------------------------------------------

    def introduce(self, domid: int, page: WriteableBuffer, notify: Callable[[], None],
                  gfn: int = 0, port: int = 0) -> int:
        """Attach a guest's ring page and event-channel kick; returns the
        engine connection id.  A second call for the same domain resets its
        connection (the guest's reconnect path)."""
        page = memoryview(page).cast("B")
        if page.readonly or len(page) < wire.XENSTORE_DOMAIN_INTERFACE_SIZE:
            raise ValueError("xenstore ring page must be writable and hold the interface")
        with self.engine.lock:
            conn_id = self.engine.introduce_domain(domid, gfn, port)
            self._attach(domid, conn_id, page, notify)
        return conn_id

    def _attach(self, domid: int, conn_id: int, page: memoryview,
                notify: Callable[[], None]) -> None:
        ring = _Ring(domid, conn_id, page, notify, *xenstore_rings(page))
        self.rings[domid] = ring
        self._reset_page(ring)

    def _introduce_from_wire(self, domid: int, gfn: int, port: int) -> None:
        if self.page_mapper is None:
            raise XsError("EINVAL")
        try:
            page, notify = self.page_mapper(domid, gfn, port)
        except XsError:
            raise
        except Exception:  # a mapping failure must not escape as a crash
            log.exception("mapping the xenstore ring of domain %d failed", domid)
            raise XsError("EINVAL") from None
        conn_id = self.engine.introduce_domain(domid, gfn, port)
        self._attach(domid, conn_id, memoryview(page).cast("B"), notify)

    def release(self, domid: int) -> None:
        with self.engine.lock:
            self.engine.release_domain(domid)  # calls back into _forget

    def _forget(self, domid: int) -> None:
        self.rings.pop(domid, None)

    def _reset_page(self, ring: _Ring) -> None:
        for offset in (wire.XENSTORE_REQ_CONS_OFFSET, wire.XENSTORE_REQ_PROD_OFFSET,
                       wire.XENSTORE_RSP_CONS_OFFSET, wire.XENSTORE_RSP_PROD_OFFSET):
            ring.store(offset, 0)
        ring.store(wire.XENSTORE_SERVER_FEATURES_OFFSET,
                   wire.XENSTORE_SERVER_FEATURE_RECONNECTION | wire.XENSTORE_SERVER_FEATURE_ERROR)
        ring.store(wire.XENSTORE_ERROR_OFFSET, wire.XENSTORE_ERROR_NONE)
        ring.store(wire.XENSTORE_CONNECTION_OFFSET, wire.XENSTORE_CONNECTED)
        ring.notify()

    # -- data movement ---------------------------------------------------------

    def kick(self, domid: int) -> None:
        """The guest signalled its event channel: serve its ring."""
        with self.engine.lock:
            ring = self.rings.get(domid)
            if ring is not None:
                self._serve(ring)

    def flush(self, conn_ids: Collection[int] | None = None) -> None:
        """Push pending output (e.g. watch events caused by other clients)."""
        with self.engine.lock:
            for ring in list(self.rings.values()):
                if conn_ids is None or ring.conn_id in conn_ids:
                    self._serve(ring)

    def _serve(self, ring: _Ring) -> None:
        if ring.load(wire.XENSTORE_CONNECTION_OFFSET) == wire.XENSTORE_RECONNECT:
            self.engine.reset_connection(ring.conn_id)
            self._reset_page(ring)
            return
        conn = self.engine.connections.get(ring.conn_id)
        if conn is None or conn.broken is not None:
            return
        notify = False
        for _ in range(_MAX_ROUNDS_PER_KICK):
            moved = self._pull_requests(ring, conn) + self._push_replies(ring)
            if conn.closed:  # the request released this very domain
                break
            if conn.broken is not None:
                ring.store(wire.XENSTORE_ERROR_OFFSET, conn.broken)
                notify = True
                break
            if not moved:
                break
            notify = True
        if notify:
            ring.notify()

    def _pull_requests(self, ring: _Ring, conn: Connection) -> int:
        room = _MAX_BUFFERED - len(conn.inbuf)
        if room <= 0:
            return 0
        try:
            data = ring.requests.read(room)
        except RingError:
            self.engine.break_connection(ring.conn_id, wire.XENSTORE_ERROR_RINGIDX)
            return 0
        if data:
            self.engine.feed(ring.conn_id, data)
        return len(data)

    def _push_replies(self, ring: _Ring) -> int:
        if not self.engine.has_output(ring.conn_id):
            return 0
        try:
            data = self.engine.data_to_send(ring.conn_id, ring.replies.space())
            return ring.replies.write(data) if data else 0
        except RingError:
            self.engine.break_connection(ring.conn_id, wire.XENSTORE_ERROR_RINGIDX)
            return 0

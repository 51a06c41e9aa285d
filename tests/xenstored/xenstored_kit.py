"""Shared helpers for the xenstored tests: an in-process client that speaks
the wire format to the engine, a message-stream parser, the guest side of a
xenstore ring, and the whole daemon (engine, rings, socket) served from a
background thread."""

from __future__ import annotations

import struct
import threading
from typing import Callable

from abi.io import xs_wire as wire
from dom0.xenstored import LocalClient, XenStore
from dom0.xenstored.ring import RingServer
from dom0.xenstored.unix_socket import SocketServer

SIZE = wire.XENSTORE_RING_SIZE


def message(msg_type: int, payload: bytes, req_id: int = 0, tx_id: int = 0) -> bytes:
    return wire.xsd_sockmsg.build(dict(type=msg_type, req_id=req_id, tx_id=tx_id,
                                       len=len(payload))) + payload


def parse_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, req_id, tx_id, payload) for every complete message in ``data``."""
    out, offset = [], 0
    while len(data) - offset >= wire.XSD_SOCKMSG_SIZE:
        header = wire.xsd_sockmsg.parse(data[offset:offset + wire.XSD_SOCKMSG_SIZE])
        end = offset + wire.XSD_SOCKMSG_SIZE + header.len
        if end > len(data):
            break
        out.append((header.type, header.req_id, header.tx_id,
                    data[offset + wire.XSD_SOCKMSG_SIZE:end]))
        offset = end
    assert offset == len(data), "trailing partial message"
    return out


class Client:
    """A connection to the engine, used through its byte interface."""

    def __init__(self, engine: XenStore, domid: int = 0, conn_id: int | None = None):
        self.engine = engine
        self.conn_id = conn_id if conn_id is not None else engine.open_connection(domid)
        self.next_req = 1
        self.events: list[tuple[bytes, bytes]] = []

    def raw(self, msg_type: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        req_id = self.next_req
        self.next_req += 1
        self.engine.feed(self.conn_id, message(msg_type, payload, req_id, tx))
        reply = None
        for m_type, m_req, m_tx, m_payload in parse_messages(self.engine.data_to_send(self.conn_id)):
            if m_type == wire.XS_WATCH_EVENT:
                path, token, rest = m_payload.split(b"\0")
                assert rest == b"" and m_req == 0
                self.events.append((path, token))
            else:
                assert reply is None, "two replies to one request"
                assert (m_req, m_tx) == (req_id, tx)
                reply = (m_type, m_payload)
        assert reply is not None, "no reply"
        return reply

    def ok(self, msg_type: int, *args: bytes, tx: int = 0, value: bytes | None = None) -> bytes:
        m_type, payload = self.raw(msg_type, encode(*args, value=value), tx)
        assert m_type == msg_type, (m_type, payload)
        return payload

    def error(self, msg_type: int, *args: bytes, tx: int = 0, value: bytes | None = None) -> str:
        m_type, payload = self.raw(msg_type, encode(*args, value=value), tx)
        assert m_type == wire.XS_ERROR, (m_type, payload)
        return payload.rstrip(b"\0").decode()

    # Convenience wrappers for the common requests.
    def write(self, path, value, tx=0):
        return self.ok(wire.XS_WRITE, path, value=value, tx=tx)

    def read(self, path, tx=0):
        return self.ok(wire.XS_READ, path, tx=tx)

    def ls(self, path, tx=0):
        return self.ok(wire.XS_DIRECTORY, path, tx=tx).split(b"\0")[:-1]

    def take_events(self):
        self.engine.feed(self.conn_id, b"")
        for m_type, _, _, payload in parse_messages(self.engine.data_to_send(self.conn_id)):
            assert m_type == wire.XS_WATCH_EVENT
            path, token, _ = payload.split(b"\0")
            self.events.append((path, token))
        events, self.events = self.events, []
        return events


def encode(*args: bytes, value: bytes | None = None) -> bytes:
    """NUL-terminated args, then an optional raw value (XS_WRITE)."""
    data = b"".join((a.encode() if isinstance(a, str) else a) + b"\0" for a in args)
    return data + (value.encode() if isinstance(value, str) else value or b"")


class XenStoreService:
    """The engine, the guest rings and the Unix socket, served by a background
    thread (dom0.daemon serves the same parts on its own loop).  Thread-safe
    through ``engine.lock``: watch events caused by any party reach sockets and
    rings without further calls."""

    def __init__(self, socket_path: str):
        self.engine = XenStore()
        self.rings = RingServer(self.engine)
        self.socket = SocketServer(self.engine, socket_path, other_transports=[self.rings])
        self._thread = threading.Thread(target=self.socket.serve_forever, name="xenstored",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.socket.stop()
        self._thread.join(timeout=5)

    def client(self, domid: int = 0) -> LocalClient:
        return LocalClient(self.engine, domid)

    def introduce(self, domid: int, page, notify: Callable[[], None], port: int = 0) -> int:
        return self.rings.introduce(domid, page, notify, port=port)

    def kick(self, domid: int) -> None:
        self.rings.kick(domid)

    def release(self, domid: int) -> None:
        self.rings.release(domid)


class Guest:
    """The guest side of a xenstore ring, as a PV kernel drives it."""

    def __init__(self, page: memoryview):
        self.page = page

    def load(self, offset):
        return struct.unpack_from("<I", self.page, offset)[0]

    def store(self, offset, value):
        struct.pack_into("<I", self.page, offset, value & 0xFFFFFFFF)

    def send_some(self, data: bytes) -> int:
        cons, prod = self.load(wire.XENSTORE_REQ_CONS_OFFSET), self.load(wire.XENSTORE_REQ_PROD_OFFSET)
        count = min(len(data), SIZE - (prod - cons))
        for i in range(count):
            self.page[wire.XENSTORE_REQ_OFFSET + ((prod + i) & (SIZE - 1))] = data[i]
        self.store(wire.XENSTORE_REQ_PROD_OFFSET, prod + count)
        return count

    def receive(self) -> bytes:
        cons, prod = self.load(wire.XENSTORE_RSP_CONS_OFFSET), self.load(wire.XENSTORE_RSP_PROD_OFFSET)
        data = bytes(self.page[wire.XENSTORE_RSP_OFFSET + ((cons + i) & (SIZE - 1))]
                     for i in range((prod - cons) & 0xFFFFFFFF))
        self.store(wire.XENSTORE_RSP_CONS_OFFSET, prod)
        return data

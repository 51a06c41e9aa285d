"""RFC 6455 WebSocket, the server's side, sans-IO: bytes in, events and bytes out.

The browser's console speaks it; every byte it sends is hostile. Rules (RFC 6455
section numbers in brackets), each checked where the frame is parsed:

- Opening handshake [4.2.1]: a GET with ``Upgrade: websocket``, ``Connection``
  naming ``upgrade``, ``Sec-WebSocket-Version: 13`` (else 426 naming 13) and a
  ``Sec-WebSocket-Key`` that is base64 of 16 bytes (else 400). The answer is 101
  with ``Sec-WebSocket-Accept`` = base64(SHA-1(key + GUID)) [4.2.2].
- Every client frame is masked [5.1]; RSV1-3 are 0, since no extension is
  negotiated [5.2]; the opcode is one of the six defined [5.2]; a 64-bit length
  has its top bit clear and every length uses the fewest bytes [5.2]: else the
  connection fails with 1002.
- Control frames (close, ping, pong) are never fragmented and carry at most 125
  bytes [5.5]: else 1002. They may arrive between the fragments of a message.
- A message is a text or binary frame followed by continuation frames up to the
  one with FIN [5.4]: a continuation with no message started, or a new message
  before the last one ended, fails with 1002. A message longer than this side's
  bound fails with 1009 [7.4.1] as soon as a frame header announces it, before
  its payload is buffered. A text message is UTF-8 [5.6], else 1007.
- A ping is answered by a pong with its payload [5.5.2]; a pong is ignored [5.5.3].
- A close frame's body is empty or a 2-byte code plus a UTF-8 reason [5.5.1]; the
  code is one a peer may send [7.4] (else 1002), the reason UTF-8 (else 1007).

States and what moves them (``TRANSITIONS``): OPEN --peer's close--> CLOSED (our close
echoes the peer's code, then the TCP connection ends) [5.5.1]; OPEN --close()--> CLOSING
(our close frame sent; data from the peer is dropped) [7.1.2]; CLOSING --peer's close-->
CLOSED; a protocol error in either state --> CLOSED: the connection fails [7.1.7], after
a close frame saying why (which the browser shows) if ours is not out yet. In CLOSED
every byte is ignored.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import enum
import hashlib
import struct
from dataclasses import dataclass

# [1.3] the GUID every server appends to the client's key
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = "13"

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
MAX_CONTROL_PAYLOAD = 125

# [7.4.1] status codes
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005          # reported for an empty close body; never sent
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
# [7.4.1]/[7.4.2]: the codes a peer may put in a close frame (1004-1006 and 1015 are reserved
# for reporting, 1012-1014 are registered since; 3000-4999 belong to libraries and applications)
_PEER_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

DEFAULT_MAX_MESSAGE = 64 * 1024


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"     # our close frame is out; waiting for the peer's
    CLOSED = "closed"       # both closes exchanged, or the connection failed: end the TCP connection


class Input(enum.Enum):
    PEER_CLOSE = "the peer's close frame"
    LOCAL_CLOSE = "close() by this side"
    PROTOCOL_ERROR = "a frame breaking the rules"


# (state, input) -> next state; a pair not listed leaves the state as it is
TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.OPEN, Input.PEER_CLOSE): State.CLOSED,
    (State.OPEN, Input.LOCAL_CLOSE): State.CLOSING,
    (State.OPEN, Input.PROTOCOL_ERROR): State.CLOSED,
    (State.CLOSING, Input.PEER_CLOSE): State.CLOSED,
    (State.CLOSING, Input.PROTOCOL_ERROR): State.CLOSED,
}


class HandshakeError(Exception):
    """The request cannot be upgraded: answer ``status`` with these extra headers."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + ACCEPT_GUID).digest()).decode("ascii")


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def handshake(method: str, headers: dict[str, str]) -> list[tuple[str, str]]:
    """Check an upgrade request's head [4.2.1]; return the 101's headers or raise HandshakeError."""
    h = {k.lower(): v for k, v in headers.items()}
    if method != "GET":
        raise HandshakeError(405, "a WebSocket opens with GET", [("Allow", "GET")])
    if "websocket" not in _tokens(h.get("upgrade", "")):
        raise HandshakeError(400, "Upgrade is not websocket")
    if "upgrade" not in _tokens(h.get("connection", "")):
        raise HandshakeError(400, "Connection does not name upgrade")
    if h.get("sec-websocket-version", "").strip() != SUPPORTED_VERSION:
        raise HandshakeError(426, "only WebSocket version 13 is spoken",
                             [("Sec-WebSocket-Version", SUPPORTED_VERSION)])
    key = h.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not base64 of 16 bytes")
    return [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]


@dataclass(frozen=True)
class TextMessage:
    text: str


@dataclass(frozen=True)
class BinaryMessage:
    data: bytes


@dataclass(frozen=True)
class Closed:
    """The connection reached CLOSED: the TCP connection may end once data_to_send() is out.
    ``code``/``reason`` are the peer's (a close frame) or ours (the rule it broke)."""
    code: int
    reason: str


Event = TextMessage | BinaryMessage | Closed


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame: never masked [5.1]."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def close_body(code: int, reason: str) -> bytes:
    # the reason is cut to fit a control frame, at a character boundary
    data = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2]
    return struct.pack("!H", code) + data.decode("utf-8", "ignore").encode("utf-8")


def _unmask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    # XOR with the key repeated, as one big integer: fast, and no Python loop per byte
    n = len(payload)
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


class Connection:
    """One server-side WebSocket after the handshake. ``receive(bytes)`` returns the events
    the bytes complete; ``send_*``/``close`` queue frames; ``data_to_send()`` takes them."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        self.max_message = max_message
        self.state = State.OPEN
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._message_opcode: int | None = None     # the data message being assembled, if any
        self._fragments: list[bytes] = []
        self._message_len = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()

    # -- input -----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        self._inbuf += data
        events: list[Event] = []
        while self.state is not State.CLOSED:
            try:
                frame = self._next_frame()
                if frame is None:
                    break
                event = self._on_frame(*frame)
            except ProtocolError as e:
                events.append(self._fail(e.code, e.reason))
                break
            if event is not None:
                events.append(event)
        return events

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, unmasked payload) of the next whole frame, or None until more bytes come.
        The header is checked before its payload is waited for, so a frame too big never
        makes this side buffer it."""
        buf = self._inbuf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        if rsv:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not b1 & 0x80:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a client frame is not masked")
        length, at = b1 & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, at = struct.unpack_from("!H", buf, 2)[0], 4
            if length < 126:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a length not in its shortest form")
        elif length == 127:
            if len(buf) < 10:
                return None
            length, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if length >> 63:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a 64-bit length with its top bit set")
            if length < 1 << 16:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a length not in its shortest form")
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a control frame over 125 bytes")
        elif self._message_len + length > self.max_message:
            raise ProtocolError(CLOSE_TOO_BIG, f"a message over {self.max_message} bytes")
        if len(buf) < at + 4 + length:
            return None
        key = bytes(buf[at:at + 4])
        payload = _unmask(bytes(buf[at + 4:at + 4 + length]), key)
        del buf[:at + 4 + length]
        return fin, opcode, payload

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            if self.state is State.OPEN:
                self._outbuf += encode_frame(OP_PONG, payload)
            return None
        if opcode == OP_PONG:
            return None
        if opcode == OP_CLOSE:
            return self._on_close(payload)
        if opcode == OP_CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a continuation with no message started")
        else:
            if self._message_opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a new message before the last one ended")
            self._message_opcode = opcode
            self._utf8.reset()
        self._message_len += len(payload)
        if self._message_opcode == OP_TEXT:
            try:    # checked per fragment: a bad byte fails the message at once [8.1]
                self._fragments.append(self._utf8.decode(payload, final=fin).encode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "a text message that is not UTF-8") from None
        else:
            self._fragments.append(payload)
        if not fin:
            return None
        data, kind = b"".join(self._fragments), self._message_opcode
        self._message_opcode, self._fragments, self._message_len = None, [], 0
        if self.state is not State.OPEN:
            return None     # [7.1.7]/[5.5.1]: data after our close is dropped
        return TextMessage(data.decode("utf-8")) if kind == OP_TEXT else BinaryMessage(data)

    def _on_close(self, payload: bytes) -> Event:
        if len(payload) == 1:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a close body of one byte")
        code, reason = CLOSE_NO_STATUS, ""
        if payload:
            code = struct.unpack_from("!H", payload)[0]
            if code not in _PEER_CODES and not 3000 <= code <= 4999:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "a close reason that is not UTF-8") from None
        if self.state is State.OPEN:    # echo the code [5.5.1]
            self._outbuf += encode_frame(OP_CLOSE, b"" if code == CLOSE_NO_STATUS else struct.pack("!H", code))
        self._move(Input.PEER_CLOSE)
        return Closed(code, reason)

    def _fail(self, code: int, reason: str) -> Closed:
        if self.state is State.OPEN:
            self._outbuf += encode_frame(OP_CLOSE, close_body(code, reason))
        self._move(Input.PROTOCOL_ERROR)
        self._inbuf.clear()     # nothing more from this peer is read
        return Closed(code, reason)

    def _move(self, what: Input) -> None:
        self.state = TRANSITIONS.get((self.state, what), self.state)

    # -- output ----------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if self.state is State.OPEN:
            self._outbuf += encode_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        if self.state is State.OPEN:
            self._outbuf += encode_frame(OP_BINARY, data)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake [7.1.2]; the peer's close frame ends it."""
        if self.state is State.OPEN:
            self._outbuf += encode_frame(OP_CLOSE, close_body(code, reason))
            self._move(Input.LOCAL_CLOSE)

    def data_to_send(self) -> bytes:
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

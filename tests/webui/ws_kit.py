"""A WebSocket client's side for the tests: masked frames as a browser sends them, and a
reader of the server's frames. Independent of dom0.webui.websocket on purpose (the encoder
under test must not check itself)."""
from __future__ import annotations

import os
import struct


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None,
                 masked: bool = True, rsv: int = 0, length_form: str = "short") -> bytes:
    """A frame as a client sends it. ``length_form`` "short" is the minimal encoding; "16" and
    "64" force the longer forms (for the rule that lengths are minimal)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mbit = 0x80 if masked else 0
    if length_form == "64" or (length_form == "short" and n >= 1 << 16):
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    elif length_form == "16" or (length_form == "short" and n >= 126):
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | n])
    if not masked:
        return head + payload
    key = mask if mask is not None else os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """(fin, opcode, payload) of every whole server frame in ``data``; server frames are never
    masked, and the stream must hold whole frames only."""
    frames, at = [], 0
    while at < len(data):
        b0, b1 = data[at], data[at + 1]
        assert not b1 & 0x80, "a server frame is masked"
        n, at = b1 & 0x7F, at + 2
        if n == 126:
            n, at = struct.unpack_from("!H", data, at)[0], at + 2
        elif n == 127:
            n, at = struct.unpack_from("!Q", data, at)[0], at + 8
        frames.append((bool(b0 & 0x80), b0 & 0x0F, data[at:at + n]))
        at += n
    assert at == len(data), "a partial frame"
    return frames


def close_code(payload: bytes) -> int:
    return struct.unpack_from("!H", payload)[0]

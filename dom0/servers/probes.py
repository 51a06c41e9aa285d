"""Does a server answer? One exchange of its own protocol through the host port forward.

A TCP connect alone proves nothing here: passt accepts on the host port before the guest
listens. So each probe needs a reply only the service itself gives:
- SMB: an SMB2 NEGOTIATE (MS-SMB2 2.2.3, over direct TCP: a 4-byte length first) answered
  by an SMB2 header with STATUS_SUCCESS;
- IPP and HTTP: an HTTP request answered by an HTTP status line (cupsd answers any GET).
"""
from __future__ import annotations

import socket
import struct
import time

SMB2_MAGIC = b"\xfeSMB"
SMB2_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")        # 64 bytes, MS-SMB2 2.2.1.2
SMB2_NEGOTIATE = struct.Struct("<HHHHI16sQ")             # 36 bytes before the dialects
SMB2_DIALECTS = (0x0202, 0x0210, 0x0300, 0x0302)
REPLY_LIMIT = 65536


def smb2_negotiate_request() -> bytes:
    header = SMB2_HEADER.pack(SMB2_MAGIC, 64, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, bytes(16))
    body = SMB2_NEGOTIATE.pack(36, len(SMB2_DIALECTS), 1, 0, 0, b"pvhyp-probe-----", 0)
    body += struct.pack(f"<{len(SMB2_DIALECTS)}H", *SMB2_DIALECTS)
    message = header + body
    return struct.pack(">I", len(message)) + message


def smb_answers(reply: bytes) -> bool:
    """An SMB2 NEGOTIATE response with STATUS_SUCCESS (after the 4-byte length)."""
    if len(reply) < 4 + SMB2_HEADER.size:
        return False
    fields = SMB2_HEADER.unpack_from(reply, 4)
    return fields[0] == SMB2_MAGIC and fields[3] == 0 and fields[4] == 0


def http_answers(reply: bytes) -> bool:
    return reply.startswith(b"HTTP/1.")


def _exchange(port: int, request: bytes, want: int, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        while len(reply) < want:
            chunk = s.recv(REPLY_LIMIT)
            if not chunk:
                break
            reply += chunk
        return reply


def answers(role: str, port: int, timeout: float = 10.0) -> bool:
    """True when the service of `role` ("smb", "print", "web") replies on 127.0.0.1:`port`."""
    try:
        if role == "smb":
            return smb_answers(_exchange(port, smb2_negotiate_request(), 4 + SMB2_HEADER.size, timeout))
        request = f"GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        return http_answers(_exchange(port, request, 12, timeout))
    except OSError:
        return False


def wait_answers(role: str, port: int, deadline: float, every: float = 2.0) -> float | None:
    """Probe until the service answers (its monotonic time) or `deadline` passes (None)."""
    while time.monotonic() < deadline:
        if answers(role, port):
            return time.monotonic()
        time.sleep(every)
    return None

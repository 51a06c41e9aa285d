"""A sans-IO HTTP/1.1 server engine: bytes in, requests out; a response is bytes.

Rules (every byte is hostile):
* The head (request line + headers) is at most MAX_HEAD bytes, at most MAX_HEADERS
  lines; the body at most MAX_BODY bytes, framed by Content-Length only (chunked
  uploads are 501: no XenAPI client sends them). Anything else malformed, including
  a Content-Length that is not one decimal number, is HttpError(400...) and the
  connection ends after that answer (its framing can no longer be trusted).
* Requests are taken one at a time (`next_request`); pipelined bytes wait in the buffer.
* Keep-alive is HTTP/1.1's default, `Connection: close` ends it; HTTP/1.0 closes
  unless it asked for keep-alive.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 16 << 10
MAX_HEADERS = 100
MAX_BODY = 1 << 20
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
REASONS = {101: "Switching Protocols", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class HttpError(Exception):
    """The request cannot be read: answer `status` with `message` and close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)   # names lower-cased; repeats joined by ", "
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def upgrade_websocket(self) -> bool:
        return self.headers.get("upgrade", "").strip().lower() == "websocket"


class RequestReader:
    """Feed it received bytes; take whole requests with next_request()."""

    def __init__(self, max_body: int = MAX_BODY):
        self.buffer = bytearray()
        self.max_body = max_body
        self._head: Request | None = None       # parsed head whose body is still arriving
        self._length = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_request(self) -> Request | None:
        """The next whole request, None until it has arrived; HttpError if it is malformed."""
        if self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise HttpError(431, f"request head longer than {MAX_HEAD} bytes")
                return None
            if end > MAX_HEAD:
                raise HttpError(431, f"request head longer than {MAX_HEAD} bytes")
            head = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            self._head, self._length = self._parse_head(head)
        if len(self.buffer) < self._length:
            return None
        request, self._head = self._head, None
        request.body = bytes(self.buffer[:self._length])
        del self.buffer[:self._length]
        return request

    def _parse_head(self, head: bytes) -> tuple[Request, int]:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
            raise HttpError(400, "malformed request line")
        if not _VERSION.match(parts[2]):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1")
        try:
            target = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "request target is not ASCII") from None
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} header lines")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise HttpError(400, "malformed header line")
            key = name.decode("ascii").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "transfer-encoding" in headers:
            raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
        length_text = headers.get("content-length", "0").strip()
        if not length_text.isdigit() or not length_text.isascii() or len(length_text) > 12:
            raise HttpError(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body:
            raise HttpError(413, f"request body larger than {self.max_body} bytes")
        return Request(parts[0].decode("ascii"), target, parts[2].decode("ascii"), headers), length


def response(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             keep_alive: bool = True, head_only: bool = False) -> bytes:
    """The bytes of one response; Content-Length always set (so keep-alive framing holds)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    names = set()
    for name, value in headers or []:
        if "\r" in name + value or "\n" in name + value:
            continue        # never a header split by a value we were handed
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (b"" if head_only else body)


def error_response(error: HttpError) -> bytes:
    return response(error.status, (error.message + "\n").encode(), [("Content-Type", "text/plain")],
                    keep_alive=False)

"""Request payloads: their NUL-terminated strings, and the plain success reply."""

from __future__ import annotations

OK = b"OK\0"  # the reply of every request that has nothing else to say


def split_strings(payload: bytes) -> list[bytes]:
    """The complete NUL-terminated strings; bytes after the last NUL are
    ignored, as xenstored ignores them."""
    return payload.split(b"\0")[:-1]


def exactly_one_string(payload: bytes) -> bytes | None:
    """The single argument of a one-argument request, or None when the
    payload is not exactly one string with its NUL as the last byte."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]

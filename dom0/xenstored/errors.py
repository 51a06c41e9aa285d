"""Errors raised inside the engine.  They never leave it as exceptions:
``XsError`` becomes an XS_ERROR reply and ``ProtocolViolation`` marks the
connection as broken (the transport then resets or drops it)."""

from abi.io.xs_wire import XENSTORE_ERROR_PROTO, XSD_ERROR_NUMBER


class XsError(Exception):
    """A request failed; answered with XS_ERROR carrying ``name``."""

    def __init__(self, name: str):
        if name not in XSD_ERROR_NUMBER:
            # xenstored answers untranslatable errors as EINVAL.
            name = "EINVAL"
        super().__init__(name)
        self.name = name


class ProtocolViolation(Exception):
    """The peer broke framing; the connection cannot be trusted any more."""

    def __init__(self, ring_error: int = XENSTORE_ERROR_PROTO, reason: str = ""):
        super().__init__(reason or f"protocol violation ({ring_error})")
        self.ring_error = ring_error

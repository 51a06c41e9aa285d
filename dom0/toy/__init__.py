"""The toy device's backend (lab 6 of docs/lessons): a device kind of dom0/xenbus that upper-cases text.

The whole of a split driver's backend half, as small as it gets: `features`
publishes what the frontend may ask for before InitWait; `connect` maps the
page the frontend granted and binds its event channel (both through
dom0/xenbus, which undoes them at disconnect); the connection answers each
new request on a kick or on the periodic pass. The protocol is
abi/io/toyif.py's. The frontend is pvguest/examples/toy.py.

A config asks for devices with `toy = ["0"]` (devids), pvhyp's own setting.
The frontend may write anything into the page: a length beyond the page is
a broken frontend (disconnected), never an exception or an overread.
"""
from __future__ import annotations

import logging

from abi.io.toyif import (
    TOY_DEVICE_KIND,
    TOY_LENGTH_OFFSET,
    TOY_MAX_LENGTH,
    TOY_REQ_PROD_OFFSET,
    TOY_RSP_PROD_OFFSET,
    TOY_TEXT_OFFSET,
)
from abi.shared_memory import SharedWords
from dom0.xenbus import DeviceError, XenbusBackends
from dom0.xenbus import entries as device_entries
from dom0.xenbus.backend import BackendDevice

log = logging.getLogger("dom0.toy")
MAX_DEVICES = 8         # toys per domain


class ToyConnection:
    """One connected frontend: its shared page, and the last request answered."""

    def __init__(self, device: BackendDevice, page: memoryview):
        self.device = device
        self.page = page
        self.words = SharedWords(page)
        self.answered = self.words.load_u32(TOY_REQ_PROD_OFFSET)   # nothing asked before we came

    def on_event(self) -> None:
        requested = self.words.load_u32(TOY_REQ_PROD_OFFSET)       # read once: the frontend may change it
        if requested == self.answered:
            return
        length = self.words.load_u32(TOY_LENGTH_OFFSET)
        if length > TOY_MAX_LENGTH:
            self.device.fault(f"request {requested}: length {length} is beyond the page ({TOY_MAX_LENGTH})")
            return
        text = bytes(self.page[TOY_TEXT_OFFSET:TOY_TEXT_OFFSET + length])   # a copy: then work on it
        self.page[TOY_TEXT_OFFSET:TOY_TEXT_OFFSET + length] = text.upper()
        self.answered = requested
        self.words.store_u32(TOY_RSP_PROD_OFFSET, requested)
        log.info("%s: request %d, %d bytes upper-cased", self.device.name, requested, length)
        self.device.notify()

    def disconnect(self) -> None:
        """Nothing in flight: each request is answered within on_event."""


class ToyKind:
    """The "toy" device kind, as dom0/xenbus plugs it."""

    name = TOY_DEVICE_KIND

    def features(self, device: BackendDevice) -> dict[str, str]:
        return {"max-length": str(TOY_MAX_LENGTH)}

    def connect(self, device: BackendDevice, frontend: dict[str, str]) -> ToyConnection:
        [page] = device.map_ring(frontend, ref_key="page-ref")
        device.bind_event(frontend)
        return ToyConnection(device, page)


def attach_all(xs, backends: XenbusBackends, domid: int, devids: list[int]) -> None:
    """The toolstack's part: each toy's two xenstore directories, then plug its backend."""
    for devid in devids:
        device_entries.write_device(xs, TOY_DEVICE_KIND, domid, devid, {}, {})
        try:
            backends.plug(TOY_DEVICE_KIND, domid, devid)
        except DeviceError as e:
            device_entries.remove_device(xs, TOY_DEVICE_KIND, domid, devid)
            raise ValueError(f"toy {devid}: {e}") from None

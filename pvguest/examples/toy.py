"""The toy device's frontend (lab 6 of docs/lessons): grant a page, publish it, kick, read the answer.

    kernel = "python:pvguest.examples.toy"      # with toy = ["0"]; cmdline "text=..." (optional)

The frontend half of a split driver, step by step as xen-blkfront does it:
find device/toy/N, wait for the backend's InitWait (2), grant the page and
allocate an unbound port for the backend, publish both and go Initialised
(3), wait for Connected (4); then each request: write, bump req_prod, kick,
wait for rsp_prod. Close (5, 6) at the end. Protocol: abi/io/toyif.py;
backend: dom0/toy.
"""
from __future__ import annotations

import time

from abi.io.toyif import (
    TOY_DEVICE_KIND,
    TOY_LENGTH_OFFSET,
    TOY_REQ_PROD_OFFSET,
    TOY_RSP_PROD_OFFSET,
    TOY_TEXT_OFFSET,
)
from abi.io.xenbus import (
    XenbusStateClosed,
    XenbusStateClosing,
    XenbusStateConnected,
    XenbusStateInitialised,
    XenbusStateInitWait,
)
from abi.shared_memory import SharedWords


class ToyFront:
    def __init__(self, kernel, devid: int = 0, timeout: float = 20.0):
        self.kernel, self.xs, self.timeout = kernel, kernel.xenbus, timeout
        self.path = f"{self.xs.get_domain_path(kernel.domid)}/device/{TOY_DEVICE_KIND}/{devid}"
        self.backend = self.xs.read(f"{self.path}/backend").decode()
        backend_id = int(self.xs.read(f"{self.path}/backend-id"))
        self.wait_backend(XenbusStateInitWait)
        self.max_length = int(self.xs.read(f"{self.backend}/max-length"))
        pfn = kernel.pages.alloc()
        self.page = kernel.page(pfn)
        self.words = SharedWords(self.page)
        self.ref = kernel.gnttab.grant_access(backend_id, pfn)        # the backend may map this page
        self.port = kernel.evtchn.alloc_unbound(remote_dom=backend_id)
        self.xs.write(f"{self.path}/page-ref", str(self.ref))
        self.xs.write(f"{self.path}/event-channel", str(self.port))
        self.xs.write(f"{self.path}/state", str(XenbusStateInitialised))
        self.wait_backend(XenbusStateConnected)
        self.requests = 0

    def backend_state(self) -> int:
        try:
            value = self.xs.read(f"{self.backend}/state")
        except Exception:           # not there (yet, or any more)
            return 0
        return int(value) if value.isdigit() else 0

    def wait_backend(self, state: int) -> None:
        deadline = time.monotonic() + self.timeout
        while self.backend_state() != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"backend state {self.backend_state()}, waited for {state}")
            self.kernel.wait(0.02)

    def upper(self, text: str) -> str:
        data = text.encode()[:self.max_length]
        self.page[TOY_TEXT_OFFSET:TOY_TEXT_OFFSET + len(data)] = data
        self.words.store_u32(TOY_LENGTH_OFFSET, len(data))
        self.requests += 1
        self.words.store_u32(TOY_REQ_PROD_OFFSET, self.requests)     # publish, then kick
        self.kernel.notify(self.port)
        deadline = time.monotonic() + self.timeout
        while self.words.load_u32(TOY_RSP_PROD_OFFSET) != self.requests:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from the toy backend")
            self.kernel.wait(0.05)
        self.kernel.pending_ports.discard(self.port)
        return bytes(self.page[TOY_TEXT_OFFSET:TOY_TEXT_OFFSET + len(data)]).decode()

    def close(self) -> None:
        self.xs.write(f"{self.path}/state", str(XenbusStateClosing))
        self.xs.write(f"{self.path}/state", str(XenbusStateClosed))
        self.kernel.gnttab.end_access(self.ref)


def main(kernel, *args) -> None:
    front = ToyFront(kernel)
    for text in (kernel.params.get("text", "hello, backend"), "a second request"):
        kernel.console.write(f"toy: {text!r} -> {front.upper(text)!r}\n")
    front.close()

"""The PV console frontend: the guest end of a struct xencons_interface page (hvc_xen's job).

The backend shares the page, so its indexes are input like any other: a ring
whose indexes no honest backend could leave is a protocol error, and as
hvc_xen (which returns -EINVAL after "Illegal ring page indices") the
frontend drops that output rather than letting the guest die of it.
"""
from __future__ import annotations

from abi.io import console as c
from pvguest.ring import ByteRing, RingError


def console_rings(page: memoryview) -> tuple[ByteRing, ByteRing]:
    """(input to the guest, output from the guest) of a struct xencons_interface."""
    into_guest = ByteRing(page, c.XENCONS_IN_OFFSET, c.XENCONS_IN_SIZE,
                          c.XENCONS_IN_CONS_OFFSET, c.XENCONS_IN_PROD_OFFSET)
    from_guest = ByteRing(page, c.XENCONS_OUT_OFFSET, c.XENCONS_OUT_SIZE,
                          c.XENCONS_OUT_CONS_OFFSET, c.XENCONS_OUT_PROD_OFFSET)
    return into_guest, from_guest


class ConsoleFrontend:
    def __init__(self, page: memoryview, notify, wait, poll_interval: float = 0.05):
        self.into_guest, self.from_guest = console_rings(page)
        self.notify = notify
        self.wait = wait
        self.poll_interval = poll_interval
        self.dropped = 0        # bytes given up on because the ring's indexes were impossible

    def write(self, data: bytes | str) -> None:
        """All of `data` to the backend, waiting while the output ring is full (as hvc_xen yields)."""
        if isinstance(data, str):
            data = data.encode()
        while data:
            try:
                n = self.from_guest.write(data)
            except RingError:
                self.dropped += len(data)
                return
            data = data[n:]
            if n:
                self.notify()
            if data:
                self.wait(self.poll_interval)

    def read(self) -> bytes:
        """Whatever input the backend has put in the ring (nothing while its indexes are impossible)."""
        try:
            data = self.into_guest.read()
        except RingError:
            return b""
        if data:
            self.notify()
        return data

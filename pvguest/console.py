"""The PV console frontend: the guest end of a struct xencons_interface page (hvc_xen's job)."""
from __future__ import annotations

from pvguest.ring import console_rings


class ConsoleFrontend:
    def __init__(self, page: memoryview, notify, wait, poll_interval: float = 0.05):
        self.into_guest, self.from_guest = console_rings(page)
        self.notify = notify
        self.wait = wait
        self.poll_interval = poll_interval

    def write(self, data: bytes | str) -> None:
        """All of `data` to the backend, waiting while the output ring is full (as hvc_xen yields)."""
        if isinstance(data, str):
            data = data.encode()
        while data:
            n = self.from_guest.write(data)
            data = data[n:]
            if n:
                self.notify()
            if data:
                self.wait(self.poll_interval)

    def read(self) -> bytes:
        """Whatever input the backend has put in the ring."""
        data = self.into_guest.read()
        if data:
            self.notify()
        return data

"""A Python guest that leaves state to look at: a connected disk ring with a known number
of requests served, persistent grants dom0 holds mapped, a watch, then it idles.

    kernel = "python:tests.inspect.inspect_guest:main"     # with a disk at xvda (51712)

Its report ("inspect: JSON" on its console) says how many requests it put on the ring.
"""
from __future__ import annotations

from pvguest.blkfront import BlkFront
from pvguest.examples import write_report

REQUESTS = 3        # write, read, flush


def main(kernel, *args) -> None:
    home = kernel.xenbus.get_domain_path(kernel.domid)
    front = BlkFront(kernel, 51712, persistent=True)
    data = bytes(range(256)) * 16
    report = {"write": front.write(8, data), "read": front.read(8, len(data))[0], "flush": front.flush(),
              "requests": REQUESTS, "port": front.port}
    kernel.xenbus.watch(f"{home}/control/shutdown", "shutdown")
    write_report(kernel, "inspect", report)
    while True:                 # idle with everything connected, until told to stop
        if kernel.xenbus.read_watch(timeout=0.5) is not None:
            if kernel.xenbus.read(f"{home}/control/shutdown") in (b"poweroff", b"reboot", b"halt"):
                return

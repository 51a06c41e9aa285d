"""Guests that misbehave on purpose, to show (and test) that others are not affected."""
from __future__ import annotations

import struct

from abi.io.console import XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_PROD_OFFSET


def console_scribbler(kernel, *args) -> None:
    """Says one line, then leaves impossible indexes in its console ring and keeps kicking."""
    kernel.console.write("scribbler: about to scribble\n")
    page = kernel.page(kernel.start_info.console.domU.mfn)
    struct.pack_into("<I", page, XENCONS_OUT_CONS_OFFSET, 0)
    struct.pack_into("<I", page, XENCONS_OUT_PROD_OFFSET, 0x7FFF_0000)
    home = kernel.xenbus.get_domain_path(kernel.domid)
    kernel.xenbus.write(f"{home}/data/scribbled", "1")
    while True:
        kernel.notify(kernel.start_info.console.domU.evtchn)
        kernel.wait(0.05)


def crasher(kernel, *args) -> None:
    """Prints a line and dies of an exception: the runner reports it and shuts down as a crash."""
    kernel.console.write("crasher: going down\n")
    raise RuntimeError("deliberate guest failure")


def console_flooder(kernel, *args) -> None:
    """Writes `bytes=N` (its command line; default 1 MiB) to its console ring and as much through
    console_io, never a newline, then powers off: whoever keeps its output must bound it."""
    size = 1 << 20
    for word in kernel.cmdline.split():
        if word.startswith("bytes="):
            size = int(word[len("bytes="):])
    chunk = b"f" * 4096
    for _ in range(0, size, len(chunk)):
        kernel.console.write(chunk)
        kernel.console_io_write(chunk)

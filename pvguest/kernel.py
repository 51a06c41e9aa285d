"""A tiny PV "kernel" for Python guests: start of day, xenbus, console, events, shutdown.

A Python guest is a process domain: its memory is addressed pseudo-physically
and it reaches the hypervisor through its channel. The toolstack prepares it
as the domain builder prepares a PV kernel: a start_info page (abi.xen
start_info) at pfn 0, the xenstore ring and the console ring on the pages
after it, event channels allocated for both. In start_info the ring frames
are pseudo-physical frame numbers (a process domain has no use for mfns).
"""
from __future__ import annotations

import functools

from abi.sched import SCHEDOP_shutdown, SHUTDOWN_poweroff, sched_shutdown
from abi.x86_pte import PAGE_SIZE
from abi.xen import HYPERCALL_NUMBERS, CONSOLEIO_write, start_info
from pvguest.console import ConsoleFrontend
from pvguest.evtchn import EventChannels
from pvguest.gnttab import GrantTable
from pvguest.xenbus import RingTransport, Xenbus

START_INFO_PFN = 0
XENSTORE_PFN = 1
CONSOLE_PFN = 2
SCRATCH_PFN = 3         # argument buffers of the library's own hypercalls
FIRST_FREE_PFN = 4
MIN_PAGES = FIRST_FREE_PFN + 1



def page(channel, pfn: int) -> memoryview:
    return channel.memory[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]


class PageAllocator:
    """Hands out the guest's free pseudo-physical pages (grant pages, data buffers)."""

    def __init__(self, first: int, end: int):
        self.next, self.end = first, end

    def alloc(self) -> int:
        if self.next >= self.end:
            raise MemoryError("guest out of pages")
        self.next += 1
        return self.next - 1


class Kernel:
    def __init__(self, channel) -> None:
        self.channel = channel
        self.domid = channel.domid
        self.start_info = start_info.parse(bytes(page(channel, START_INFO_PFN))[:start_info.sizeof()])
        self.cmdline = self.start_info.cmd_line.split(b"\0", 1)[0].decode(errors="replace")
        self.evtchn = EventChannels(channel, SCRATCH_PFN * PAGE_SIZE)
        self.pending_ports: set[int] = set()
        self.pages = PageAllocator(FIRST_FREE_PFN, len(channel.memory) // PAGE_SIZE)
        store_port = self.start_info.store_evtchn
        self.xenbus = Xenbus(RingTransport(page(channel, self.start_info.store_mfn),
                                           lambda: self.notify(store_port), self.wait))
        cons = self.start_info.console.domU
        self.console = ConsoleFrontend(page(channel, cons.mfn), lambda: self.notify(cons.evtchn),
                                       self.wait)

    @functools.cached_property
    def gnttab(self) -> GrantTable:
        return GrantTable(self.channel, SCRATCH_PFN * PAGE_SIZE)

    @property
    def params(self) -> dict[str, str]:
        """key=value words of the command line."""
        return dict(word.split("=", 1) for word in self.cmdline.split() if "=" in word)

    def page(self, pfn: int) -> memoryview:
        return page(self.channel, pfn)

    def notify(self, port: int) -> None:
        if port:
            self.evtchn.send(port)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until an event (or `timeout`); pending ports collect in `pending_ports`."""
        fired = self.channel.wait_for_event(timeout)
        self.pending_ports.update(self.evtchn.take_pending())
        return fired

    def hypercall(self, name: str, *args: int) -> int:
        return self.channel.hypercall(HYPERCALL_NUMBERS[name], *args)

    def console_io_write(self, text: bytes | str) -> int:
        data = text.encode() if isinstance(text, str) else text
        base = SCRATCH_PFN * PAGE_SIZE
        self.channel.memory[base:base + len(data[:PAGE_SIZE])] = data[:PAGE_SIZE]
        return self.hypercall("console_io", CONSOLEIO_write, len(data[:PAGE_SIZE]), base)

    def shutdown(self, reason: int = SHUTDOWN_poweroff) -> int:
        base = SCRATCH_PFN * PAGE_SIZE
        arg = sched_shutdown.build({"reason": reason})
        self.channel.memory[base:base + len(arg)] = arg
        return self.hypercall("sched_op", SCHEDOP_shutdown, base)

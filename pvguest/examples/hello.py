"""Says hello on its console, writes to its xenstore home, then echoes console input until told to stop.

Stops when the toolstack writes control/shutdown (xl shutdown / reboot), as a PV kernel's
xenbus shutdown watcher does.
"""
from __future__ import annotations

from abi.sched import SHUTDOWN_poweroff, SHUTDOWN_reboot


def main(kernel, *args) -> int:
    home = kernel.xenbus.get_domain_path(kernel.domid)
    name = kernel.xenbus.read(f"{home}/name").decode()
    kernel.console_io_write(f"hello from {name} via console_io\n")
    kernel.console.write(f"Hello from {name} (domain {kernel.domid}), cmdline {kernel.cmdline!r}\n")
    kernel.xenbus.write(f"{home}/data/greeting", "hello")
    kernel.xenbus.watch(f"{home}/control/shutdown", "shutdown")
    while True:
        data = kernel.console.read()
        if data:
            kernel.console.write(b"echo: " + data)
        event = kernel.xenbus.read_watch(timeout=0.05)
        if event is not None:
            try:
                request = kernel.xenbus.read(f"{home}/control/shutdown").decode()
            except Exception:
                request = ""
            if request in ("poweroff", "reboot", "halt"):
                kernel.console.write(f"{name}: {request} requested, bye\n")
                kernel.xenbus.write(f"{home}/control/shutdown", "")
                return SHUTDOWN_reboot if request == "reboot" else SHUTDOWN_poweroff

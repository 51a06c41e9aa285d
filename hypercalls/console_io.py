"""HYPERVISOR_console_io: CONSOLEIO_write (text to the hypervisor's console) and CONSOLEIO_read.

Xen's default policy (hv.xsm.console_io) lets only a privileged domain use
console_io, except CONSOLEIO_write on a debug (CONFIG_VERBOSE_DEBUG) build,
which XTF and early kernels rely on; pvhyp behaves like that debug build.
A domU's text is filtered as Xen filters it (printable characters and
newlines only).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import errno as xen_errno
from abi.xen import CONSOLEIO_read, CONSOLEIO_write
from hypercalls import hypercall
from pvhyp.console import console_write

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

CHUNK = 127         # Xen copies through a 128-byte kernel buffer, one byte kept for the NUL
INT_MAX = 0x7FFF_FFFF


def _printable(data: bytes) -> bytes:
    # Xen's is_console_printable: isprint, newline or tab (Latin-1 upper half dropped here)
    return bytes(c for c in data if 0x20 <= c < 0x7F or c in (0x0A, 0x09))


@hypercall("console_io")
def do_console_io(ctx: HypercallContext, cmd: int, count: int, buffer: int) -> int:
    cmd &= 0xFFFF_FFFF
    count &= 0xFFFF_FFFF
    rc = ctx.hv.xsm.console_io(ctx.domain, cmd)
    if rc:
        return rc
    if cmd == CONSOLEIO_write:
        return _guest_console_write(ctx, count, buffer)
    if cmd == CONSOLEIO_read:
        if count > INT_MAX:
            return -xen_errno.E2BIG
        return 0        # no serial input ring: nothing to read
    return -xen_errno.ENOSYS


def _guest_console_write(ctx: HypercallContext, count: int, buffer: int) -> int:
    # Chunk by chunk as Xen copies: a fault part-way keeps what was already written.
    while count > 0:
        n = min(count, CHUNK)
        data = ctx.read(buffer, n)
        if not ctx.domain.is_privileged:
            data = _printable(data)
        console_write(ctx.hv, ctx.domain, data)
        buffer += n
        count -= n
    return 0

"""A System.map for a kernel that ships without one, from its own kallsyms.

Debian's linux-image package carries a placeholder System.map (the real one
is in the -dbg package), but every Debian kernel embeds its symbol table
(kallsyms) compressed inside the image.  vmlinux-to-elf decompresses the
vmlinuz and decodes that table; this module only turns its answer into the
usual `address type name` lines, which pvhyp.diagnose reads.
"""
from __future__ import annotations

import logging


class SymbolsUnavailable(Exception):
    """One line saying why no symbol table could be recovered."""


def system_map_from_kernel(vmlinuz: bytes) -> bytes:
    """System.map text (sorted by address) decoded from the kernel image's kallsyms."""
    try:
        from vmlinux_to_elf.core.auto_unpack import VmlinuzDecompressor
        from vmlinux_to_elf.core.kallsyms import KallsymsFinder
    except ImportError as e:
        raise SymbolsUnavailable(f"vmlinux-to-elf is not installed ({e})") from None
    # The library reports its search steps through the root logger at INFO/WARNING.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        image = VmlinuzDecompressor(vmlinuz).decompressed
        finder = KallsymsFinder(image, 64)
    except Exception as e:           # the library raises assorted errors on unknown layouts
        # Chained: on a layout the library does not know, its traceback is the clue.
        raise SymbolsUnavailable(f"no kallsyms table found in the kernel image ({type(e).__name__}: {e})") from e
    finally:
        logging.disable(previous)
    lines = sorted((s.virtual_address, s.symbol_type.value, s.name) for s in finder.symbols)
    if not lines:
        raise SymbolsUnavailable("the kernel's kallsyms table is empty")
    return "".join(f"{address:016x} {kind} {name}\n" for address, kind, name in lines).encode()

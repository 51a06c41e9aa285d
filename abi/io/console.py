"""xen/include/public/io/console.h: the PV console ring page.

Two byte rings in one page, indexes free-running like io/ring.h's: the guest
writes ``out`` and advances ``out_prod``; the console backend reads it and
advances ``out_cons`` (and the reverse for ``in``), then notifies through
the console event channel (start_info.console.domU).
"""

from construct import Bytes, Struct

from abi.cdefs import Typedef, uint32_t

XENCONS_RING_IDX = Typedef("XENCONS_RING_IDX", uint32_t)

XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048


def MASK_XENCONS_IDX(idx: int, ring_size: int) -> int:
    """Offset in a ring of ``ring_size`` bytes (a power of two) of a free-running index."""
    return idx & (ring_size - 1)


xencons_interface = Struct(
    "in" / Bytes(XENCONS_IN_SIZE) * "backend -> guest (keyboard input)",
    "out" / Bytes(XENCONS_OUT_SIZE) * "guest -> backend (console output)",
    "in_cons" / XENCONS_RING_IDX * "guest: input consumed",
    "in_prod" / XENCONS_RING_IDX * "backend: input produced",
    "out_cons" / XENCONS_RING_IDX * "backend: output consumed",
    "out_prod" / XENCONS_RING_IDX * "guest: output produced",
)
xencons_interface.docs = "The console page (start_info.console.domU.mfn)."

XENCONS_IN_OFFSET = 0
XENCONS_OUT_OFFSET = XENCONS_IN_SIZE
XENCONS_IN_CONS_OFFSET = XENCONS_IN_SIZE + XENCONS_OUT_SIZE
XENCONS_IN_PROD_OFFSET = XENCONS_IN_CONS_OFFSET + 4
XENCONS_OUT_CONS_OFFSET = XENCONS_IN_CONS_OFFSET + 8
XENCONS_OUT_PROD_OFFSET = XENCONS_IN_CONS_OFFSET + 12

# For the registry: what here has no twin in console.h, and why.
NOT_IN_HEADER = {
    name: "pvhyp's ring size / byte offset in the console page, from xencons_interface"
    for name in ("XENCONS_IN_SIZE", "XENCONS_OUT_SIZE", "XENCONS_IN_OFFSET", "XENCONS_OUT_OFFSET",
                 "XENCONS_IN_CONS_OFFSET", "XENCONS_IN_PROD_OFFSET", "XENCONS_OUT_CONS_OFFSET",
                 "XENCONS_OUT_PROD_OFFSET")
}

"""Fields another party reads concurrently: each loaded and stored as one aligned access of its width.

Shared pages (ring indexes, grant flags, page-table entries, shared_info and
vcpu_info words) are read by another process or an unlocked vCPU thread
while we write them. `struct.pack_into` is not a store: CPython zero-fills
the whole field (memset) and then copies the value in, so a reader between
the two sees 0 -- 67,243 times in 5.6M reads when measured, and a console
ring whose `out_cons` read as 0 looked corrupt. A memoryview cast to the
field's native type ('H', 'I', 'Q') is: CPython's `memoryview.__setitem__`
converts the value first and then copies it with one fixed-size memcpy,
which compiles to a single mov; on x86-64 an aligned mov of 2, 4 or 8 bytes
is atomic (SDM vol. 3, 9.1.1). Loads go through the same casts so that a
read is one mov too. `tests/core/test_shared_memory_stores.py` hammers a
reader process against a writer and counts torn values (none).

This is layout-level code (offsets, widths, byte order of Xen's ABI) with no
I/O, which is why it lives in `abi`: the hypervisor, dom0 and the Python
guests all write the same shared fields and may all import `abi`.

Offsets are byte offsets and must be aligned to the field's width (every
field Xen shares is naturally aligned); an unaligned or negative offset is
a caller's bug and raises ValueError, never a silently split store.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Xen's shared fields are little-endian and the casts use the host's order;
# pvhyp runs on x86-64 only, where both agree.
if sys.byteorder != "little":       # pragma: no cover - x86-64 only
    raise ImportError("abi.shared_memory needs a little-endian host (Xen's x86 ABI)")

_U16_MASK = 0xFFFF
_U32_MASK = 0xFFFF_FFFF
_U64_MASK = 0xFFFF_FFFF_FFFF_FFFF


def _cast(raw: memoryview, fmt: Literal["H", "I", "Q"], width: int) -> memoryview:
    """A view of `raw` as native `fmt` items (a tail shorter than one item is left out)."""
    whole = len(raw) - len(raw) % width
    view = raw[:whole].cast(fmt)
    if view.itemsize != width:      # pragma: no cover - C types of another ABI
        raise ImportError(f"memoryview format {fmt!r} is {view.itemsize} bytes, not {width}")
    return view


def _misaligned(offset: int, width: int) -> ValueError:
    return ValueError(f"shared field at byte {offset:#x} is not a {width}-byte aligned offset")


class SharedWords:
    """Aligned 16/32/64-bit loads and stores over one shared buffer (a page, or all machine memory).

    The casts are made once here, so each access is one index operation; a
    store writes the low bits of the value, as C's assignment to the field does.
    """

    __slots__ = ("_raw", "_u16", "_u32", "_u64")

    def __init__(self, buf: WriteableBuffer) -> None:
        self._raw = memoryview(buf).cast("B")
        self._u16 = _cast(self._raw, "H", 2)
        self._u32 = _cast(self._raw, "I", 4)
        self._u64 = _cast(self._raw, "Q", 8)

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def u64(self) -> memoryview:
        """The 64-bit cast itself, for a hot caller that checks alignment on its own
        (MachineMemory: one call less per PTE); index = offset // 8."""
        return self._u64

    # The alignment check is inlined in each accessor: PTE and ring paths call these a lot.
    def load_u16(self, offset: int) -> int:
        if offset & 1 or offset < 0:
            raise _misaligned(offset, 2)
        value: int = self._u16[offset >> 1]
        return value

    def store_u16(self, offset: int, value: int) -> None:
        if offset & 1 or offset < 0:
            raise _misaligned(offset, 2)
        self._u16[offset >> 1] = value & _U16_MASK

    def load_u32(self, offset: int) -> int:
        if offset & 3 or offset < 0:
            raise _misaligned(offset, 4)
        value: int = self._u32[offset >> 2]
        return value

    def store_u32(self, offset: int, value: int) -> None:
        if offset & 3 or offset < 0:
            raise _misaligned(offset, 4)
        self._u32[offset >> 2] = value & _U32_MASK

    def load_u64(self, offset: int) -> int:
        if offset & 7 or offset < 0:
            raise _misaligned(offset, 8)
        value: int = self._u64[offset >> 3]
        return value

    def store_u64(self, offset: int, value: int) -> None:
        if offset & 7 or offset < 0:
            raise _misaligned(offset, 8)
        self._u64[offset >> 3] = value & _U64_MASK

    def store_u64_changed(self, offset: int, values: list[int] | tuple[int, ...]) -> None:
        """Write a run of 64-bit entries (a page table), each changed one in one store.

        Entries that already hold their value are not touched, so a concurrent
        walker of the table sees every entry either old or new, never cleared.
        """
        if offset & 7 or offset < 0:
            raise _misaligned(offset, 8)
        first = offset >> 3
        table = self._u64
        for i, value in enumerate(values):
            value &= _U64_MASK
            if table[first + i] != value:
                table[first + i] = value

    def release(self) -> None:
        """Drop the casts (the buffer's owner may then close it)."""
        for view in (self._u16, self._u32, self._u64, self._raw):
            view.release()

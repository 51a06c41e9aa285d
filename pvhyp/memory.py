"""Machine memory: one shared-memory file, mapped once.

Every byte a guest can ever see lives here. It is a memfd so that dom0, a
separate OS process, can map the very same frames (the fd is passed over a
Unix socket); the hypervisor decides which frames it may map. The CPU engine
maps the whole file as unicorn's physical address space, so a PV guest's page
tables (which hold machine frame numbers) are walked by the CPU directly.
"""
from __future__ import annotations

import ctypes
import mmap
import os

from abi.shared_memory import SharedWords
from abi.x86_pte import PAGE_SHIFT, PAGE_SIZE

_ZERO_PAGE = bytes(PAGE_SIZE)
_U64_MASK = 0xFFFF_FFFF_FFFF_FFFF


class MachineMemory:
    """`size` bytes of machine memory, frame-addressed (mfn << 12)."""

    def __init__(self, size: int, name: str = "pvhyp-machine-memory"):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"machine memory size must be a positive multiple of {PAGE_SIZE}: {size}")
        self.size = size
        self.nr_frames = size >> PAGE_SHIFT
        self.fd = os.memfd_create(name, 0)
        os.ftruncate(self.fd, size)
        self.buf = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.buf)
        # Guests, dom0 and other vCPUs read PTEs, grant flags and vcpu_info words while we
        # write them: every such field goes through these one-store accessors.
        self.words = SharedWords(self.buf)
        self._u64 = self.words.u64      # read_u64/write_u64 index it directly (the PTE hot path)

    @property
    def host_address(self) -> int:
        """Host virtual address of byte 0 (for unicorn's mem_map_ptr)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buf))

    def valid_mfn(self, mfn: int) -> bool:
        return 0 <= mfn < self.nr_frames

    def frame(self, mfn: int) -> memoryview:
        if not self.valid_mfn(mfn):
            raise IndexError(f"mfn {mfn:#x} outside machine memory")
        base = mfn << PAGE_SHIFT
        return self.view[base:base + PAGE_SIZE]

    def read(self, maddr: int, length: int) -> bytes:
        if maddr < 0 or length < 0 or maddr + length > self.size:
            raise IndexError(f"machine range {maddr:#x}+{length:#x} outside memory")
        return self.buf[maddr:maddr + length]

    def write(self, maddr: int, data: bytes) -> None:
        if maddr < 0 or maddr + len(data) > self.size:
            raise IndexError(f"machine range {maddr:#x}+{len(data):#x} outside memory")
        self.buf[maddr:maddr + len(data)] = data

    def read_u64(self, maddr: int) -> int:
        if maddr & 7 or maddr < 0:      # no shared field is unaligned: a plain read of the bytes
            return int.from_bytes(self.read(maddr, 8), "little")
        value: int = self._u64[maddr >> 3]
        return value

    def write_u64(self, maddr: int, value: int) -> None:
        """One aligned 8-byte store: a vCPU walking this PTE sees the old or the new entry.

        An unaligned value (no PTE, grant or vcpu_info field is) is copied in as
        bytes: that cannot be one store, but it is never zero-filled first either.
        """
        if maddr & 7 or maddr < 0:
            self.write(maddr, (value & _U64_MASK).to_bytes(8, "little"))
            return
        self._u64[maddr >> 3] = value & _U64_MASK

    def scrub(self, mfn: int) -> None:
        """Zero a frame: no frame is handed on still holding old contents."""
        base = mfn << PAGE_SHIFT
        self.buf[base:base + PAGE_SIZE] = _ZERO_PAGE

    def close(self) -> None:
        """Release the mapping and the fd; views still held elsewhere keep the mapping alive."""
        if self.fd < 0:
            return
        self.view.release()
        del self._u64
        self.words.release()
        try:
            self.buf.close()
        except BufferError:
            pass            # closed by the garbage collector once the last view goes
        os.close(self.fd)
        self.fd = -1

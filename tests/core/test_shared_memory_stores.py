"""Shared fields are stored in one piece: a reader process hammering a field never sees it torn or zeroed.

Issue 14, defect 3: `struct.pack_into` zero-fills a field before writing it,
so the peer (another process mapping the same page) read 0 often enough that
a console-flooding guest died of `RingError: cons=0x0`. These tests run a
real second process (fork, the page shared by mmap) that reads while this
one writes, and count the values no writer ever stored. The count is the
assertion; how long anything took is not.
"""
from __future__ import annotations

import mmap
import os
import struct

import pytest

from abi.shared_memory import SharedWords
from pvguest.console import ConsoleFrontend, console_rings
from pvguest.ring import ByteRing, RingError
from pvhyp.memory import MachineMemory

READS = 200_000
# Control words after the field under test: the reader's verdict and its "done" flag.
_DONE, _TORN, _SEEN = 2048, 2056, 2064


def _every_byte_equal(value: int, width: int) -> bool:
    """The writers below store only values whose bytes are all equal and non-zero."""
    low = value & 0xFF
    return low != 0 and value == int.from_bytes(bytes([low]) * width, "little")


def _hammer(page, write, read, values_change: bool = True) -> tuple[int, int]:
    """Fork a reader calling `read()` READS times while we call `write(k)` for k = 1..255, 1..;
    `read` returns (torn?, what it saw). Returns (torn reads, distinct values seen)."""
    control = SharedWords(page)
    for word in (_DONE, _TORN, _SEEN):
        control.store_u64(word, 0)
    write(1)
    pid = os.fork()
    if pid == 0:                                    # the reader: another process, as dom0 is
        code = 1
        try:
            torn, seen, reads = 0, set(), 0
            # At least READS reads, and on until the writer has been seen at work (a busy
            # machine may not run it at first); bounded all the same.
            while reads < READS or (values_change and len(seen) < 2 and reads < 50 * READS):
                bad, value = read()
                seen.add(value)
                torn += bad
                reads += 1
            control.store_u64(_TORN, torn)
            control.store_u64(_SEEN, len(seen))
            code = 0
        finally:
            control.store_u64(_DONE, 1)
            os._exit(code)
    k = 0
    while not control.load_u64(_DONE):              # the writer: store until the reader is done
        k = k % 255 + 1
        write(k)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return control.load_u64(_TORN), control.load_u64(_SEEN)


def _hammer_word(page, store, load, width: int, offset: int) -> tuple[int, int]:
    """Values whose bytes are all k: a torn or zero-filled value has unequal or zero bytes."""
    def write(k: int) -> None:
        store(offset, int.from_bytes(bytes([k]) * width, "little"))

    def read() -> tuple[bool, int]:
        value = load(offset)
        return not _every_byte_equal(value, width), value & 0xFF
    return _hammer(page, write, read)


def _shared_page():
    return mmap.mmap(-1, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_a_word_store_is_never_seen_torn_or_zero(width):
    page = _shared_page()
    words = SharedWords(page)
    store = {2: words.store_u16, 4: words.store_u32, 8: words.store_u64}[width]
    load = {2: words.load_u16, 4: words.load_u32, 8: words.load_u64}[width]
    torn, seen = _hammer_word(page, store, load, width, offset=8)
    assert torn == 0
    assert seen > 1, "the reader must have watched the value change"


def test_machine_memory_pte_writes_are_never_seen_torn():
    """write_u64 is how the hypervisor writes PTEs, GDT entries and vcpu_info words."""
    memory = MachineMemory(8 * 4096)
    try:
        torn, seen = _hammer_word(memory.buf, memory.write_u64, memory.read_u64, 8, offset=3 * 4096 + 64)
        assert torn == 0 and seen > 1
    finally:
        memory.close()


def test_misaligned_or_negative_offsets_are_refused_not_split():
    words = SharedWords(bytearray(64))
    for bad in (-8, 1, 2, 4, 12):
        with pytest.raises(ValueError):
            words.store_u64(bad, 1)
    with pytest.raises(ValueError):
        words.load_u32(2)
    with pytest.raises(IndexError):
        words.store_u32(64, 1)
    words.store_u16(62, 0x1_2345)                  # the low 16 bits, as C's assignment stores them
    assert words.load_u16(62) == 0x2345


def test_store_u64_changed_leaves_unchanged_entries_alone():
    buf = bytearray(64)
    words = SharedWords(buf)
    words.store_u64(0, 7)
    words.store_u64_changed(0, [7, 1 << 63, 0, 5])
    assert struct.unpack_from("<4Q", buf) == (7, 1 << 63, 0, 5)


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_a_ring_index_rewritten_in_place_is_never_seen_as_zero(side):
    """ByteRing itself: every read() stores cons and every write() stores prod, even unchanged.

    The peer's view of the ring is checked on each of its loads; with the
    zero-filling store it saw cons (or prod) = 0 and called the ring corrupt.
    """
    page = _shared_page()
    view = memoryview(page)
    _, ring = console_rings(view)
    base = 0x7000_0000
    ring.words.store_u32(ring.cons_offset, base)
    ring.words.store_u32(ring.prod_offset, base + 100)
    ours = ByteRing(view, ring.data_offset, ring.size, ring.cons_offset, ring.prod_offset)

    def write(_k: int) -> None:
        if side == "consumer":
            ours.read(0)                            # re-stores cons, unchanged
        else:
            ours.write(b"")                         # re-stores prod, unchanged

    def read() -> tuple[bool, int]:
        try:
            return False, ring.available()
        except RingError:
            return True, -1
    torn, seen = _hammer(page, write, read, values_change=False)
    assert (torn, seen) == (0, 1), f"{torn} of {READS} reads saw an impossible index"


STREAM = 1 << 19       # 512 KiB through a 2 KiB console ring: thousands of index stores each way


def _pattern(start: int, n: int) -> bytes:
    return bytes((start + i) % 251 for i in range(n))


def test_a_console_flood_through_another_process_never_sees_impossible_indexes():
    """The defect as it was met: a guest floods its console ring, dom0 drains it from another process."""
    page = _shared_page()
    view = memoryview(page)
    into_guest, from_guest = console_rings(view)
    del into_guest
    pid = os.fork()
    if pid == 0:                                    # the guest: producer of the output ring
        code = 1
        try:
            sent = 0
            while sent < STREAM:
                chunk = _pattern(sent, min(1 + sent % 301, STREAM - sent))
                n = from_guest.write(chunk)         # raises RingError on an impossible index
                if not n:
                    os.sched_yield()
                sent += n
            code = 0
        finally:
            os._exit(code)
    received, errors = 0, 0
    while received < STREAM:                        # dom0's console backend: the consumer
        try:
            data = from_guest.read(1 + received % 257)
        except RingError:
            errors += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        if not data:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                pid = 0                             # the producer is gone before its stream ended
                break
            os.sched_yield()
            continue
        assert data == _pattern(received, len(data)), f"stream corrupted at byte {received}"
        received += len(data)
    assert errors == 0, "the consumer met an impossible index"
    assert pid, "the producer died of an impossible index"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert received == STREAM


def test_a_frontend_facing_impossible_indexes_drops_output_instead_of_dying():
    """hvc_xen returns -EINVAL on illegal indices; the Python guest's frontend likewise gives up the write."""
    page = memoryview(bytearray(4096))
    woken = []
    console = ConsoleFrontend(page, notify=lambda: woken.append(1), wait=lambda _t: None)
    _, out = console_rings(page)
    out.words.store_u32(out.cons_offset, 0)
    out.words.store_u32(out.prod_offset, 0x191B_F80)             # the backend left this pair
    console.write(b"still alive\n")
    assert console.dropped == len(b"still alive\n") and not woken
    into, _ = console_rings(page)
    into.words.store_u32(into.prod_offset, 0x7FFF_0000)
    assert console.read() == b""
    # Once the indexes make sense again, output flows.
    out.words.store_u32(out.prod_offset, 0)
    console.write(b"back\n")
    assert bytes(ByteRing(page, out.data_offset, out.size, out.cons_offset, out.prod_offset).read()) == b"back\n"


def test_machine_memory_keeps_unaligned_u64_access_byte_exact():
    """No shared field is unaligned, but callers may read or write one: the bytes, never an error."""
    memory = MachineMemory(2 * 4096)
    try:
        memory.write_u64(4096 + 3, 0x1122_3344_5566_7788)
        assert memory.read(4096 + 3, 8) == bytes.fromhex("8877665544332211")
        assert memory.read_u64(4096 + 3) == 0x1122_3344_5566_7788
        assert memory.read(4096, 3) == bytes(3) and memory.read(4096 + 11, 1) == b"\0"
    finally:
        memory.close()

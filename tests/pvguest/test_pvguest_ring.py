"""Byte rings in a shared page: wrap-around, full/empty, and indexes a hostile peer wrote."""
from __future__ import annotations

import struct

import pytest

from pvguest.console import console_rings
from pvguest.ring import ByteRing, RingError, xenstore_rings


def ring(size=16):
    page = memoryview(bytearray(4096))
    return page, ByteRing(page, 0, size, 1024, 1028)


def test_write_then_read_wraps_around():
    page, r = ring()
    struct.pack_into("<II", page, 1024, 0xFFFF_FFF8, 0xFFFF_FFF8)     # indexes about to wrap 2**32
    assert r.write(b"0123456789") == 10
    assert r.available() == 10 and r.space() == 6
    assert r.write(b"abcdefghij") == 6                                  # only what fits
    assert r.read(4) == b"0123"
    assert r.read() == b"456789abcdef"
    assert r.read() == b"" and struct.unpack_from("<II", page, 1024) == (8, 8)


@pytest.mark.parametrize("cons,prod", [(0, 17), (100, 50), (0, 0x8000_0000)])
def test_impossible_indexes_move_nothing(cons, prod):
    page, r = ring()
    struct.pack_into("<II", page, 1024, cons, prod)
    before = bytes(page)
    for op in (r.read, lambda: r.write(b"x"), r.available):
        with pytest.raises(RingError):
            op()
    assert bytes(page) == before


def test_the_layouts_of_the_xenstore_and_console_pages():
    page = memoryview(bytearray(4096))
    req, rsp = xenstore_rings(page)
    assert (req.data_offset, req.size, req.cons_offset, req.prod_offset) == (0, 1024, 2048, 2052)
    assert (rsp.data_offset, rsp.cons_offset, rsp.prod_offset) == (1024, 2056, 2060)
    into_guest, from_guest = console_rings(page)
    assert (into_guest.data_offset, into_guest.size, into_guest.cons_offset) == (0, 1024, 3072)
    assert (from_guest.data_offset, from_guest.size, from_guest.prod_offset) == (1024, 2048, 3084)

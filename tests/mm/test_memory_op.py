"""memory_op: reservations and the M2P's whereabouts."""
import struct

from abi import errno as E
from abi import memory as M
from abi import xen_x86_64 as X64

from .mm_kit import BUF_VA

INVALID = 2 ** 64 - 1


def _memop(guest, cmd, payload: bytes) -> int:
    guest.ctx.write(BUF_VA, payload)
    return guest.call("memory_op", cmd, BUF_VA)


def _reservation(extents_va, nr, order=0, flags=0, domid=0x7FF0) -> bytes:
    return struct.pack("<QQIIH6x", extents_va, nr, order, flags, domid)


def test_reservation_queries(hv, guest, other):
    d = guest.domain
    assert _memop(guest, M.XENMEM_current_reservation, struct.pack("<H", 0x7FF0)) == d.tot_pages
    assert _memop(guest, M.XENMEM_maximum_reservation, struct.pack("<H", 0x7FF0)) == d.max_pages
    assert _memop(guest, M.XENMEM_maximum_reservation, struct.pack("<H", other.domid)) == -E.EPERM
    assert _memop(guest, M.XENMEM_maximum_reservation, struct.pack("<H", 0x7F00)) == -E.ESRCH
    assert _memop(guest, M.XENMEM_maximum_ram_page, b"") == hv.frames.nr_frames
    assert _memop(guest, M.XENMEM_maximum_ram_page | 1 << 6, b"") == -E.EINVAL
    assert _memop(guest, M.XENMEM_maximum_gpfn, struct.pack("<H", 0x7FF0)) == 0
    assert guest.call("memory_op", M.XENMEM_current_reservation, 0xFFFF_8000_0000_0000) == -E.EFAULT


def test_decrease_then_populate(hv, guest):
    d = guest.domain
    mfn = guest.mfn(30)
    assert guest.call("update_va_mapping", 30 << 12, 0, 0) == 0        # unmap it first
    before = (d.tot_pages, hv.frames.free_frames)
    guest.ctx.write(BUF_VA + 64, struct.pack("<Q", mfn))
    assert _memop(guest, M.XENMEM_decrease_reservation, _reservation(BUF_VA + 64, 1)) == 1
    assert (d.tot_pages, hv.frames.free_frames) == (before[0] - 1, before[1] + 1)
    assert d.p2m[30] == INVALID
    # Not ours any more.
    assert _memop(guest, M.XENMEM_decrease_reservation, _reservation(BUF_VA + 64, 1)) == 0
    guest.ctx.write(BUF_VA + 64, struct.pack("<Q", 30))
    assert _memop(guest, M.XENMEM_populate_physmap, _reservation(BUF_VA + 64, 1)) == 1
    new = struct.unpack("<Q", guest.ctx.read(BUF_VA + 64, 8))[0]
    assert hv.frames.owner[new] == d.domid and hv.get_m2p(new) == 30 and d.p2m[30] == new
    assert d.tot_pages == before[0]


def test_decrease_of_a_mapped_page_waits_for_the_last_reference(hv, guest):
    d = guest.domain
    mfn = guest.mfn(31)                      # still mapped by the boot L1
    guest.ctx.write(BUF_VA + 64, struct.pack("<Q", mfn))
    assert _memop(guest, M.XENMEM_decrease_reservation, _reservation(BUF_VA + 64, 1)) == 1
    assert hv.frames.owner[mfn] == d.domid and not hv.frames.allocated[mfn]
    tot = d.tot_pages
    assert guest.call("update_va_mapping", 31 << 12, 0, 0) == 0
    assert hv.frames.owner[mfn] == -1 and d.tot_pages == tot - 1


def test_reservation_limits(hv, guest, other):
    d = guest.domain
    room = d.max_pages - d.tot_pages
    assert _memop(guest, M.XENMEM_increase_reservation, _reservation(BUF_VA + 64, room + 3)) == room
    assert _memop(guest, M.XENMEM_increase_reservation, _reservation(0, 1, order=10)) == 0
    assert _memop(guest, M.XENMEM_increase_reservation, _reservation(0, 1, domid=other.domid)) == 0
    assert _memop(guest, M.XENMEM_increase_reservation, _reservation(0, 1 << 58)) == 0
    assert guest.call("memory_op", M.XENMEM_increase_reservation, 0x7F_0000_0000) == 0
    # start extent beyond the batch: nothing done, start extent returned.
    assert _memop(guest, M.XENMEM_increase_reservation | 3 << 6, _reservation(0, 2)) == 3


def test_machphys(hv, guest):
    assert _memop(guest, M.XENMEM_machphys_mapping, bytes(24)) == 0
    start, end, max_mfn = struct.unpack("<QQQ", guest.ctx.read(BUF_VA, 24))
    assert (start, end, max_mfn) == (X64.MACH2PHYS_VIRT_START, X64.MACH2PHYS_VIRT_END, X64.MACH2PHYS_NR_ENTRIES - 1)
    assert _memop(guest, M.XENMEM_machphys_mfn_list, struct.pack("<I4xQI4x", 4, BUF_VA + 64, 0)) == 0
    n = struct.unpack_from("<I", guest.ctx.read(BUF_VA + 16, 4))[0]
    assert n == 1 and struct.unpack("<Q", guest.ctx.read(BUF_VA + 64, 8))[0] == hv.m2p_first_mfn
    assert _memop(guest, M.XENMEM_machphys_mapping | 1 << 6, bytes(24)) == -E.ENOSYS


def test_memory_maps(hv, guest):
    assert _memop(guest, M.XENMEM_memory_map, struct.pack("<I4xQ", 8, BUF_VA + 64)) == -E.ENOSYS
    e820 = struct.pack("<QQI", 0, 64 << 12, 1)
    guest.ctx.write(BUF_VA + 128, e820)
    assert _memop(guest, M.XENMEM_set_memory_map, struct.pack("<H6xI4xQ", 0x7FF0, 1, BUF_VA + 128)) == 0
    assert _memop(guest, M.XENMEM_set_memory_map, struct.pack("<H6xI4xQ", 0x7FF0, 1025, BUF_VA + 128)) == -E.EINVAL
    assert _memop(guest, M.XENMEM_memory_map, struct.pack("<I4xQ", 8, BUF_VA + 256)) == 0
    assert guest.ctx.read(BUF_VA + 256, 20) == e820
    assert _memop(guest, M.XENMEM_machine_memory_map, struct.pack("<I4xQ", 8, BUF_VA + 256)) == -E.EPERM


def test_physmap_ops_are_for_translated_guests(guest):
    assert _memop(guest, M.XENMEM_add_to_physmap, struct.pack("<HHIQQ", 0x7FF0, 0, 2, 0, 0)) == -E.EACCES
    assert _memop(guest, M.XENMEM_add_to_physmap, struct.pack("<HHIQQ", 0x7FF0, 0, 4, 0, 0)) == -E.ENOSYS
    assert _memop(guest, M.XENMEM_remove_from_physmap, struct.pack("<H6xQ", 0x7FF0, 0)) == -E.EACCES
    assert _memop(guest, 63, b"") == -E.ENOSYS

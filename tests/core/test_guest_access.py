"""copy_from_guest / copy_to_guest through a hand-built page table, and hostile tables."""
from __future__ import annotations

import pytest

from pvhyp.guest_access import (
    GuestFault,
    addr_ok,
    copy_from_guest,
    copy_to_guest,
    handle_ok,
    read_guest_virtual,
    walk,
    write_guest_virtual,
)

P, RW, US = 1, 2, 4


def build_tables(hv, d, va, data_mfn, flags=P | RW | US):
    """L4 -> L3 -> L2 -> L1 -> data_mfn for `va`; returns the L4 mfn."""
    l4, l3, l2, l1 = hv.frames.alloc(d.domid, 4)
    mem = hv.memory
    for table, index, target in ((l4, (va >> 39) & 511, l3), (l3, (va >> 30) & 511, l2),
                                 (l2, (va >> 21) & 511, l1), (l1, (va >> 12) & 511, data_mfn)):
        mem.write_u64((table << 12) + index * 8, (target << 12) | (flags if table == l1 else P | RW | US))
    return l4


def test_read_and_write_through_page_tables(hv):
    d = hv.create_domain(max_pages=16)
    (data,) = hv.frames.alloc(d.domid, 1)
    va = 0x7F00_1234_5000
    v = d.vcpus[0]
    v.guest_table = build_tables(hv, d, va, data)
    copy_to_guest(v, va + 0x10, b"hello")
    assert hv.memory.read((data << 12) + 0x10, 5) == b"hello"
    assert copy_from_guest(v, va + 0x10, 5) == b"hello"


def test_crossing_into_an_unmapped_page_faults_without_writing(hv):
    d = hv.create_domain(max_pages=16)
    (data,) = hv.frames.alloc(d.domid, 1)
    va = 0x40_0000
    v = d.vcpus[0]
    v.guest_table = build_tables(hv, d, va, data)
    with pytest.raises(GuestFault):
        copy_to_guest(v, va + 4094, b"abcd")
    assert hv.memory.read((data << 12) + 4094, 2) == b"\0\0"


def test_read_only_and_supervisor_pages(hv):
    d = hv.create_domain(max_pages=16)
    (data,) = hv.frames.alloc(d.domid, 1)
    v = d.vcpus[0]
    v.guest_table = build_tables(hv, d, 0x1000, data, flags=P | US)
    assert copy_from_guest(v, 0x1000, 4) == bytes(4)
    with pytest.raises(GuestFault):
        copy_to_guest(v, 0x1000, b"x")
    v.guest_table = build_tables(hv, d, 0x1000, data, flags=P | RW)
    with pytest.raises(GuestFault):
        copy_from_guest(v, 0x1000, 1)


@pytest.mark.parametrize("va", [0x0000_8000_0000_0000, 0xFFFF_8000_0000_0000, 0xFFFF_87FF_FFFF_F000, -1, 1 << 64])
def test_non_canonical_and_hypervisor_addresses_fault(hv, va):
    d = hv.create_domain(max_pages=16)
    v = d.vcpus[0]
    v.guest_table = hv.frames.alloc(d.domid, 1)[0]
    with pytest.raises(GuestFault):
        copy_from_guest(v, va, 8)


def test_the_cpu_view_reads_and_writes_all_or_nothing(hv):
    """read/write_guest_virtual: the engine's road, through a CR3, the same walk as handles."""
    d = hv.create_domain(max_pages=16)
    (data,) = hv.frames.alloc(d.domid, 1)
    va = 0x40_0000
    cr3 = build_tables(hv, d, va, data) << 12
    assert write_guest_virtual(hv.memory, cr3, va + 8, b"frame")
    assert read_guest_virtual(hv.memory, cr3, va + 8, 5) == b"frame"
    assert not write_guest_virtual(hv.memory, cr3, va + 4094, b"abcd")
    assert hv.memory.read((data << 12) + 4094, 2) == b"\0\0"
    assert read_guest_virtual(hv.memory, cr3, va + 4094, 4) is None
    read_only = build_tables(hv, d, va, data, flags=P | US) << 12
    assert read_guest_virtual(hv.memory, read_only, va, 2) == b"\0\0"
    assert not write_guest_virtual(hv.memory, read_only, va, b"x")


def test_addr_ok_refuses_the_hypervisor_range_of_paging_guests_only(hv):
    assert addr_ok(0x7FFF_FFFF_F000) and addr_ok(0xFFFF_8800_0000_0000)
    assert not addr_ok(0xFFFF_8000_0000_0000) and not addr_ok(1 << 47)
    from pvhyp.channel import create_process_domain
    assert not handle_ok(hv.create_domain(max_pages=4), 0xFFFF_8000_0000_0000)
    assert handle_ok(create_process_domain(hv, nr_pages=4), 0xFFFF_8000_0000_0000)


def test_entries_pointing_outside_machine_memory_fault(hv):
    d = hv.create_domain(max_pages=16)
    (l4,) = hv.frames.alloc(d.domid, 1)
    hv.memory.write_u64(l4 << 12, ((hv.memory.nr_frames + 5) << 12) | P | RW | US)
    with pytest.raises(GuestFault):
        walk(hv.memory, l4, 0x1000, write=False)


def test_process_domains_use_pseudo_physical_addresses(hv):
    from pvhyp.channel import InProcessChannel, create_process_domain
    d = create_process_domain(hv, nr_pages=4)
    chan = InProcessChannel(hv, d)
    chan.memory[0x1ffe:0x2002] = b"wxyz"
    assert copy_from_guest(d.vcpus[0], 0x1ffe, 4) == b"wxyz"
    with pytest.raises(GuestFault):
        copy_from_guest(d.vcpus[0], 4 * 4096 - 2, 4)


def test_destroy_scrubs_and_frees_every_frame(hv):
    free_before = hv.frames.free_frames
    d = hv.create_domain(max_pages=32)
    mfns = hv.populate(d, 32)
    for mfn in mfns:
        hv.memory.write(mfn << 12, b"secret")
    hv.destroy_domain(d.domid)
    assert hv.frames.free_frames == free_before
    assert all(hv.memory.read(m << 12, 6) == bytes(6) for m in mfns)
    assert all(hv.get_m2p(m) == 0xFFFF_FFFF_FFFF_FFFF for m in mfns)


def test_dom0_cannot_map_a_validated_page_table_writable(hv):
    """privcmd's rule: a frame typed as a page table maps read-only only, else dom0 bypasses validation."""
    from pvhyp.channel import ChannelError, InProcessChannel, create_process_domain
    from pvhyp.mm.testbed import build_pv_domain
    dom0 = create_process_domain(hv, nr_pages=8, privileged=True, domid=0)
    chan = InProcessChannel(hv, dom0)
    tables = build_pv_domain(hv, 64)
    l4_pfn = tables.domain.p2m.index(tables.l4)
    with pytest.raises(ChannelError):
        chan.map_foreign(tables.domain.domid, [l4_pfn], writable=True)
    (view,) = chan.map_foreign(tables.domain.domid, [l4_pfn], writable=False)
    assert view.readonly
    (data,) = chan.map_foreign(tables.domain.domid, [0], writable=True)   # an ordinary page: fine
    assert not data.readonly

"""The hypervisor's views (pvhyp/introspect.py) and counters over a hypervisor in this process,
where a test can play the hostile guest: scribble on its grant table and event bitmaps, or
race a page-table entry to a frame outside memory. No view may raise, whatever it reads.
The channel's OP_INSPECT is driven through pvguest's real client over a real socket.
"""
from __future__ import annotations

import json
import random

import pytest

from abi import errno as E
from abi.pvhyp_channel import HEADER, INSPECT, OP_INSPECT, OP_REPLY, RESULT
from abi.xen import __HYPERVISOR_xen_version
from pvguest.hypercall_channel import ChannelError, SocketChannel
from pvhyp.channel import create_process_domain
from pvhyp.channel_server import ChannelServer, _domain_info
from pvhyp.hypercall_table import HypercallContext
from pvhyp.introspect import VIEWS, InspectError, counters, evtchn, frames, grants, inspect, pagetables
from pvhyp.mm.testbed import build_pv_domain

NR_PAGES = 64


@pytest.fixture
def guest(hv):
    return build_pv_domain(hv, NR_PAGES)


def test_every_view_is_json(guest):
    for name, (_, needs_va) in VIEWS.items():
        data = inspect(guest.domain, name, va=0x1000 if needs_va else 0, verbose=True)
        assert json.loads(json.dumps(data)) == data, name


def test_pagetables_walk_of_the_testbed_mapping(guest):
    va = 5 << 12 | 0x123
    walk = pagetables(guest.domain, va)
    assert [row["table_mfn"] for row in walk["levels"]] == [guest.l4, guest.l3, guest.l2, guest.l1s[0]]
    assert walk["maps"]["maddr"] == guest.mfn(5) << 12 | 0x123
    assert walk["levels"][-1]["frame"]["pfn"] == 5
    assert [row["frame"]["type"] for row in walk["levels"][:3]] == ["L3", "L2", "L1"]


def test_a_raced_entry_to_a_frame_outside_memory_is_shown_not_raised(hv, guest):
    # what a walk may read while the guest rewrites its tables: any 64-bit value
    hv.memory.write_u64(guest.l1s[0] << 12 | 7 * 8, (hv.memory.nr_frames + 5) << 12 | 0x67)
    hv.memory.write_u64(guest.l2 << 12 | 1 * 8, 0xFFFF_FFFF_FFFF_F067)
    walk = pagetables(guest.domain, 7 << 12)
    assert walk["levels"][-1]["frame"]["valid"] is False
    walk = pagetables(guest.domain, 1 << 21)
    assert "outside machine memory" in walk["stops"]


@pytest.mark.parametrize("va, vcpu", [(1 << 47, 0), (1 << 64, 0), (-1, 0), (0, 1), (0, -1)])
def test_pagetables_refuses_what_cannot_be_walked(guest, va, vcpu):
    with pytest.raises(InspectError) as e:
        pagetables(guest.domain, va, vcpu)
    assert e.value.errno == E.EINVAL


def test_process_domains_have_no_page_tables(hv):
    d = create_process_domain(hv, 16)
    with pytest.raises(InspectError):
        pagetables(d, 0)
    assert frames(d)["counts"]["other"] == 16


def test_scribbled_grant_table_and_event_bitmaps_do_not_raise(hv, guest):
    d = guest.domain
    rng = random.Random(17)
    for mfn in d.grant_table.shared + [d.shared_info_mfn]:
        hv.memory.write(mfn << 12, rng.randbytes(4096))
    for _ in range(3):
        assert grants(d)["in_use"] >= 0
        assert evtchn(d)["bound"] >= 0
        assert counters(d)["events/pending"] >= 0


def test_unknown_view(guest):
    with pytest.raises(InspectError) as e:
        inspect(guest.domain, "\udcff" * 3)
    assert e.value.errno == E.EINVAL


def test_counters_count_hypercalls_by_name_and_pinned_tables(hv, guest):
    d = guest.domain
    ctx = HypercallContext(d.vcpus[0])
    for _ in range(3):
        hv.hypercalls.dispatch(ctx, __HYPERVISOR_xen_version, [0, 0, 0, 0, 0, 0])
    info = _domain_info(d)["counters"]
    assert info["hypercalls/xen_version"] == 3
    assert info["mm/pinned_l4"] == 1 and info["mm/pinned_l1"] == 0
    assert {"evtchn/bound", "grant/mapped", "events/pending", "mm/pinned_l2", "mm/pinned_l3"} <= set(info)


def test_the_channel_op_for_dom0_and_its_hostile_frames(hv, guest):
    dom0 = create_process_domain(hv, 16, privileged=True, domid=0)
    server = ChannelServer(hv)
    try:
        channel = SocketChannel(server.attach(dom0))
        assert channel.inspect(guest.domain.domid, "frames")["counts"]["L4 pinned"] == 1
        assert channel.inspect(guest.domain.domid, "pagetables", va=0x3000)["maps"] is not None
        for domid, name, errno in ((4242, "frames", E.ESRCH), (guest.domain.domid, "nope", E.EINVAL),
                                   (guest.domain.domid, "pagetables", E.EINVAL)):
            with pytest.raises(ChannelError) as e:
                channel.inspect(domid, name, va=1 << 63 if name == "pagetables" else 0)
            assert e.value.errno == errno
        # raw bytes in the view name: an answer, never a dropped connection
        channel.sock.sendall(HEADER.pack(OP_INSPECT, 0, INSPECT.size)
                             + INSPECT.pack(guest.domain.domid, 0xFFFF, 0xFFFF, b"\xff" * 16, 2**64 - 1))
        op, _, length = HEADER.unpack(channel.sock.recv(HEADER.size))
        assert op == OP_INSPECT | OP_REPLY and RESULT.unpack(channel.sock.recv(length))[0] == -E.EINVAL
        assert channel.inspect(guest.domain.domid, "evtchn")["domid"] == guest.domain.domid
        channel.close()
    finally:
        server.close()


def test_an_unprivileged_domain_may_not_inspect(hv, guest):
    other = create_process_domain(hv, 16)
    server = ChannelServer(hv)
    try:
        channel = SocketChannel(server.attach(other))
        with pytest.raises(ChannelError) as e:
            channel.inspect(guest.domain.domid, "grants")
        assert e.value.errno == E.EPERM
        channel.close()
    finally:
        server.close()

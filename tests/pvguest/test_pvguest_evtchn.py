"""Event channel helpers of a process domain against the real hypervisor (in-process channel)."""
from __future__ import annotations

import pvguest.evtchn as evtchn_module
from pvguest.evtchn import EventChannelError, EventChannels
from pvhyp.channel import InProcessChannel, create_process_domain


def pair(hv):
    a = InProcessChannel(hv, create_process_domain(hv, 8))
    b = InProcessChannel(hv, create_process_domain(hv, 8))
    return (a, EventChannels(a, 0)), (b, EventChannels(b, 0))


def test_interdomain_send_sets_the_peer_pending_and_take_pending_clears_it(hv):
    (a, ea), (b, eb) = pair(hv)
    port_b = eb.alloc_unbound(remote_dom=a.domid)
    port_a = ea.bind_interdomain(b.domid, port_b)
    assert eb.take_pending() == []
    ea.send(port_a)
    assert b.wait_for_event(1)
    assert eb.take_pending() == [port_b]
    assert eb.take_pending() == []
    eb.send(port_b)
    assert ea.take_pending() == [port_a]
    ea.close(port_a)
    try:
        ea.send(port_a)
        raise AssertionError("send on a closed port succeeded")
    except EventChannelError as e:
        assert e.rc < 0


def test_clearing_is_atomic_where_libatomic_exists(hv):
    import pytest
    if evtchn_module._ATOMIC_AND_U8 is None:
        pytest.skip("no libatomic.so.1 here: clearing falls back to a byte write")
    (_, ea), _ = pair(hv)
    ea.shared_info[2048] = 0xFF
    ea._clear_pending(3)
    assert ea.shared_info[2048] == 0xF7

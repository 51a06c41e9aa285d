"""netback's ring engine, sans-IO: frames in both directions, and every hostile-entry rule."""
from __future__ import annotations

import struct

import pytest

from abi.io import netif as N
from dom0.net.checksum import checksum
from dom0.net.netif import FATAL_SLOTS, MAX_SLOTS, NetifEngine
from tests.net.kit import MAC_A, MAC_B, PageCopier, rings_pair, tcp_frame, udp_frame


@pytest.fixture
def setup():
    copier = PageCopier()
    front, tx_page, rx_page = rings_pair(copier)
    engine = NetifEngine(7, memoryview(tx_page), memoryview(rx_page), copier, rx_sg=True)
    return front, engine, copier


def send_and_service(front, engine, frame, **kw):
    assert front.send(frame, **kw)
    front.push_tx()
    frames, _ = engine.service_tx()
    return frames


def test_one_frame_goes_out_and_is_answered_okay(setup):
    front, engine, _ = setup
    frame = udp_frame(b"hello")
    assert send_and_service(front, engine, frame) == [frame]
    assert front.reap_tx() == [N.NETIF_RSP_OKAY]
    assert engine.counters.tx_packets == 1 and engine.counters.tx_bytes == len(frame)


def test_a_frame_over_several_pages_is_reassembled(setup):
    front, engine, _ = setup
    frame = udp_frame(bytes(range(256)) * 40)        # > 2 pages: three slots chained by more_data
    assert send_and_service(front, engine, frame) == [frame]
    assert front.reap_tx() == [N.NETIF_RSP_OKAY] * 3


def test_csum_blank_gets_the_udp_and_tcp_checksums_filled(setup):
    front, engine, _ = setup
    good = udp_frame(b"payload!")
    blank = good[:40] + b"\0\0" + good[42:]
    (out,) = send_and_service(front, engine, blank, csum_blank=True)
    assert out == good
    tcp = tcp_frame(0x18, payload=b"GET / HTTP/1.0\r\n\r\n", check=0x1234)
    (out,) = send_and_service(front, engine, tcp, csum_blank=True)
    ip_src, ip_dst = out[26:30], out[30:34]
    segment = out[34:]
    pseudo = ip_src + ip_dst + struct.pack("!BBH", 0, 6, len(segment))
    assert checksum(segment, pseudo) == 0       # the whole sum checks out


def test_csum_blank_on_a_non_ip_frame_is_dropped_but_answered(setup):
    front, engine, _ = setup
    frame = MAC_B + MAC_A + b"\x88\xb5" + bytes(50)
    assert send_and_service(front, engine, frame, csum_blank=True) == []
    assert front.reap_tx() == [N.NETIF_RSP_OKAY]
    assert engine.counters.tx_dropped == 1


def test_runt_frame_is_answered_error(setup):
    front, engine, _ = setup
    front.raw_tx([(100, 0, 0, 1, 10)])
    front.push_tx()
    assert engine.service_tx()[0] == []
    assert front.reap_tx() == [N.NETIF_RSP_ERROR]
    assert engine.counters.tx_errors == 1 and not engine.fatal


def test_bad_gref_is_answered_error_and_the_next_packet_still_works(setup):
    front, engine, _ = setup
    front.raw_tx([(99999, 0, 0, 1, 60)])
    front.push_tx()
    assert engine.service_tx()[0] == []
    frame = udp_frame(b"after")
    assert send_and_service(front, engine, frame) == [frame]
    front.reap_tx()
    assert front.tx_statuses == [N.NETIF_RSP_ERROR, N.NETIF_RSP_OKAY]


def test_too_many_slots_drops_the_packet_and_answers_every_slot(setup):
    front, engine, _ = setup
    n = MAX_SLOTS + 1
    front.raw_tx([(100, 0, N.NETTXF_more_data if i < n - 1 else 0, i, n * 10 if i == 0 else 10)
                  for i in range(n)])
    front.push_tx()
    assert engine.service_tx()[0] == []
    assert front.reap_tx() == [N.NETIF_RSP_ERROR] * n
    assert not engine.fatal


@pytest.mark.parametrize("requests, why", [
    ([(100, 4000, 0, 1, 200)], "first slot crossing"),
    ([(100, 0, N.NETTXF_more_data, 1, 100), (101, 0, 0, 2, 200)], "remain"),
    ([(100, 0, N.NETTXF_more_data, 1, 100), (101, 4090, 0, 2, 50)], "crossing its page"),
    ([(100, 0, N.NETTXF_more_data, 1, 100)], "past the producer"),
    ([(100, 0, N.NETTXF_more_data, i, 1000 * FATAL_SLOTS if i == 0 else 1000) for i in range(FATAL_SLOTS)],
     "more than"),
    ([(100, 0, N.NETTXF_extra_info, 1, 100)], "extra_info slot missing"),
])
def test_protocol_breaks_stop_the_device(setup, requests, why):
    front, engine, _ = setup
    front.raw_tx(requests)
    front.push_tx()
    with pytest.raises(Exception, match=why):
        engine.service_tx()
    assert why.split()[0] in engine.fatal
    assert engine.service_tx() == ([], False)       # stopped: nothing more is read


def test_unknown_extra_type_is_fatal_and_gso_is_refused(setup):
    front, engine, _ = setup
    front.raw_tx([(100, 0, N.NETTXF_extra_info, 1, 60)])
    front.raw_tx_bytes(struct.pack("<BB6x", N.XEN_NETIF_EXTRA_TYPE_GSO, 0))
    front.push_tx()
    assert engine.service_tx()[0] == []
    assert front.reap_tx() == [N.NETIF_RSP_ERROR, N.NETIF_RSP_NULL]
    front.raw_tx([(100, 0, N.NETTXF_extra_info, 2, 60)])
    front.raw_tx_bytes(struct.pack("<BB6x", 9, 0))
    front.push_tx()
    with pytest.raises(Exception, match="unknown type"):
        engine.service_tx()


def test_impossible_req_prod_is_fatal(setup):
    front, engine, _ = setup
    front.tx_shared.req_prod = 5000
    with pytest.raises(Exception, match="more than a ring"):
        engine.service_tx()


def test_tx_budget_bounds_one_call(setup):
    front, engine, _ = setup
    engine.tx_budget = 4
    for i in range(10):
        front.send(udp_frame(bytes([i]) * 20))
    front.push_tx()
    assert len(engine.service_tx()[0]) == 4
    assert engine.tx_pending()


def test_rx_fills_posted_buffers(setup):
    front, engine, _ = setup
    front.post_rx()
    frames = [udp_frame(bytes([i]) * 100) for i in range(5)]
    for f in frames:
        assert engine.queue_rx(f)
    engine.service_rx()
    assert front.receive() == frames
    assert engine.counters.rx_packets == 5


def test_rx_frame_over_a_page_uses_a_chain_only_with_sg():
    copier = PageCopier()
    front, tx_page, rx_page = rings_pair(copier)
    big = udp_frame(bytes(6000))
    sg = NetifEngine(1, memoryview(tx_page), memoryview(rx_page), copier, rx_sg=True)
    front.post_rx()
    sg.queue_rx(big)
    sg.service_rx()
    assert front.receive() == [big]
    copier2 = PageCopier()
    front2, tx2, rx2 = rings_pair(copier2)
    plain = NetifEngine(1, memoryview(tx2), memoryview(rx2), copier2, rx_sg=False)
    assert not plain.queue_rx(big)
    assert plain.counters.rx_dropped == 1


def test_a_frontend_that_posts_no_buffers_only_loses_its_own_frames(setup):
    front, engine, _ = setup
    engine.rx_queue_frames = 8
    for i in range(20):
        engine.queue_rx(udp_frame(bytes([i]) * 10))
    assert len(engine.rx_queue) == 8 and engine.counters.rx_dropped == 12
    assert engine.service_rx() is False
    assert engine.rx.sring.req_event == engine.rx.req_cons + 1     # wake me when one is posted
    front.post_rx(3)
    engine.service_rx()
    assert len(front.receive()) == 3 and len(engine.rx_queue) == 5


def test_rx_bad_buffer_gref_is_answered_error(setup):
    front, engine, copier = setup
    del copier.pages[1000]
    front.post_rx(2)
    engine.queue_rx(udp_frame(b"a"))
    engine.queue_rx(udp_frame(b"b"))
    engine.service_rx()
    got = front.receive()
    assert got[0] == N.NETIF_RSP_ERROR and got[1] == udp_frame(b"b")
    assert engine.counters.rx_errors == 1


def test_rx_impossible_req_prod_is_fatal(setup):
    front, engine, _ = setup
    engine.queue_rx(udp_frame(b"x"))
    front.rx_shared.req_prod = 100000
    with pytest.raises(Exception, match="more than a ring"):
        engine.service_rx()


def test_buffers_posted_while_the_engine_asks_for_a_kick_are_found_at_once(setup):
    """The lost wakeup of RX: the frontend posts buffers between our read of req_prod and
    our write of req_event (so it checks the old req_event and does not kick): the engine
    looks again after the write, as RING_FINAL_CHECK_FOR_REQUESTS does."""
    front, engine, _ = setup
    base = type(engine.rx.sring)
    posted: list[int] = []

    def set_req_event(sring, value):
        base.req_event.fset(sring, value)
        if not posted:
            posted.append(3)
            front.post_rx(3)

    engine.rx.sring.__class__ = type("RacingRing", (base,), {"req_event": property(base.req_event.fget,
                                                                                    set_req_event)})
    frames = [udp_frame(bytes([i]) * 10) for i in range(2)]
    for f in frames:
        engine.queue_rx(f)
    assert engine.service_rx() is not None
    assert front.receive() == frames and not engine.rx_queue

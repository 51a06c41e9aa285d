"""io/ring.h's index arithmetic, on a buffer, against a model."""

from hypothesis import given, settings
from hypothesis import strategies as st

from abi.io import blkif, netif, ring

BLKIF = ring.RingLayout.of(blkif.blkif_request, blkif.blkif_response)
U32 = 1 << 32


def test_ring_sizes_match_the_well_known_values():
    # blkif: 112-byte entries -> 36 fit in 4032 bytes -> 32; netif tx/rx: 256.
    assert (BLKIF.entry_size, BLKIF.nr_ents) == (112, 32)
    assert ring.RingLayout.of(netif.netif_tx_request, netif.netif_tx_response).nr_ents == 256
    assert ring.RingLayout.of(netif.netif_rx_request, netif.netif_rx_response).nr_ents == 256
    assert ring.__RING_SIZE(112) == ring.ring_size(112) == 32
    assert BLKIF.entry_offset(0) == 64 and BLKIF.entry_offset(33) == 64 + 112


def test_round_down_power_of_two():
    assert [ring.round_down_power_of_two(n) for n in (0, 1, 2, 3, 36, 64, 4095)] == [0, 1, 2, 2, 32, 64, 2048]


def test_header_matches_its_offsets():
    assert ring.sring_header.sizeof() == ring.SRING_HEADER_SIZE
    assert blkif.blkif_sring.sizeof() == ring.SRING_HEADER_SIZE + BLKIF.entry_size


def test_notify_only_when_the_batch_crosses_the_event():
    assert ring.notify_needed(new=1, old=0, event=1)
    assert not ring.notify_needed(new=3, old=1, event=5)
    assert ring.notify_needed(new=5, old=3, event=4)
    assert ring.notify_needed(new=2, old=U32 - 2, event=U32 - 1)  # across the wrap


def _pair(start: int = 0):
    page = bytearray(4096)
    shared = ring.SharedRing(page, BLKIF)
    shared.init()
    shared.req_prod = shared.rsp_prod = start
    shared.req_event = shared.rsp_event = (start + 1) % U32
    return page, ring.FrontRing(shared, start), ring.BackRing(shared, start)


def test_request_and_response_travel_with_notifications():
    _, front, back = _pair()
    request = blkif.blkif_request.build({"operation": 0, "nr_segments": 1, "handle": 0x51, "id": 9,
                                         "sector_number": 0, "seg": [{"gref": 8, "first_sect": 0, "last_sect": 7}] * 11})
    front.put_request(request)
    assert front.push_requests_and_check_notify()  # back asked for the first request
    assert back.unconsumed_requests() == 1
    assert back.take_request() == request
    assert not back.final_check_for_requests()
    back.put_response(blkif.blkif_response.build({"id": 9, "operation": 0, "status": 0}))
    assert back.push_responses_and_check_notify()
    response = blkif.blkif_response.parse(front.take_response())
    assert response.id == 9 and response.status == blkif.BLKIF_RSP_OKAY
    assert not front.final_check_for_responses()
    assert front.sring.rsp_event == 2


@settings(max_examples=40, deadline=None)
@given(start=st.sampled_from([0, 5, U32 - 3, U32 - 40]),
       batches=st.lists(st.integers(0, 40), min_size=1, max_size=8))
def test_front_back_model(start, batches):
    """Whatever the batching and wherever the indexes wrap, every request is
    delivered once, in order, and the ring never holds more than it can."""
    _, front, back = _pair(start)
    sent = received = 0
    for batch in batches:
        for _ in range(batch):
            if front.full():
                assert front.free_requests() == 0
                break
            front.put_request(sent.to_bytes(8, "little"))
            sent += 1
        front.push_requests_and_check_notify()
        assert not back.request_prod_overflow(back.sring.req_prod)
        while back.unconsumed_requests():
            assert int.from_bytes(back.take_request()[:8], "little") == received
            received += 1
            back.put_response(b"")
        back.push_responses_and_check_notify()
        while front.unconsumed_responses():
            front.take_response()
        assert front.free_requests() == front.nr_ents
    assert sent == received

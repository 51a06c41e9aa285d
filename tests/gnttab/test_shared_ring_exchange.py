"""Acceptance: two guests exchange data through a granted page and an interdomain event channel.

Each guest runs in its own thread and only uses its hypercall channel, its
own memory and the frames the hypervisor lets it map: the frontend grants a
page and offers an unbound port, the backend maps the page and binds the
port; then requests and replies go both ways, each announced by an event
and awaited with wait_for_event, as a split driver does.
"""
from __future__ import annotations

import threading

from abi import grant_table as GA
from pvhyp import event_channel as ev
from pvhyp import grant_table as gnt
from pvhyp.memory import PAGE_SHIFT
from tests.evtchn.evtchn_kit import DATA_PAGE

ROUNDS = 50
REQ, RSP = 0, 2048          # the two halves of the shared page
REF = 8


def wait_pending(guest, port, timeout=5.0) -> None:
    while not guest.pending(port):
        assert guest.ch.wait_for_event(timeout), f"d{guest.domid}: no event on port {port}"
    guest.clear_pending(port)
    guest.ack_upcall()


def test_two_guests_exchange_data(hv, a, b):
    front, back = a, b
    offer = {}
    ready = threading.Event()
    errors = []

    def frontend():
        try:
            page = front.page(DATA_PAGE)
            page[:] = bytes(len(page))
            front.grant(REF, back.domid, DATA_PAGE)
            offer["port"] = front.alloc_unbound(back.domid)
            ready.set()
            port = offer["port"]
            wait_pending(front, port)                        # the backend connected
            for i in range(ROUNDS):
                msg = f"request {i}".encode()
                page[REQ:REQ + 2] = len(msg).to_bytes(2, "little")
                page[REQ + 2:REQ + 2 + len(msg)] = msg
                assert front.send(port) == 0
                wait_pending(front, port)
                n = int.from_bytes(page[RSP:RSP + 2], "little")
                assert bytes(page[RSP + 2:RSP + 2 + n]) == f"reply to request {i}".encode()
        except BaseException as e:      # reported by the main thread
            errors.append(e)

    def backend():
        try:
            assert ready.wait(5)
            out = back.map_grant(front.domid, REF, GA.GNTMAP_host_map, host_addr=0x40000)
            assert out["status"] == GA.GNTST_okay
            page = back.ch.map_machine_frame(out["dev_bus_addr"] >> PAGE_SHIFT)
            port = back.bind_interdomain(front.domid, offer["port"])
            back.clear_pending(port)
            back.ack_upcall()
            assert back.send(port) == 0
            for _ in range(ROUNDS):
                wait_pending(back, port)
                n = int.from_bytes(page[REQ:REQ + 2], "little")
                reply = b"reply to " + bytes(page[REQ + 2:REQ + 2 + n])
                page[RSP:RSP + 2] = len(reply).to_bytes(2, "little")
                page[RSP + 2:RSP + 2 + len(reply)] = reply
                assert back.send(port) == 0
            del page
            assert back.unmap_grant(out["handle"], host_addr=0x40000) == GA.GNTST_okay
            assert back.evtchn("close", port=port)[0] == 0
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=frontend), threading.Thread(target=backend)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert front.gstatus(REF) == 0                           # the grant is free to revoke
    assert ev.check_consistency(hv) == [] and gnt.check_consistency(hv) == []

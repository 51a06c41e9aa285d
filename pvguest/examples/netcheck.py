"""Python guests that use vifs through netfront and report what they saw (tests read the report).

    kernel = "python:pvguest.examples.netcheck:loop"      # vif 0 and vif 1 on one bridge
    kernel = "python:pvguest.examples.netcheck:hostile"   # vif 0 hostile; vifs 1 and 2 keep working
    kernel = "python:pvguest.examples.netcheck:starve"    # vif 1 posts no RX buffers; vif 0 floods it,
                                                          # then still reaches vif 2
    kernel = "python:pvguest.examples.netcheck:hotplug"   # connects vifs as network-attach adds them

Each writes a JSON report to its xenstore home (data/report) and a line on
its console.
"""
from __future__ import annotations

import struct
import time
import traceback

from abi.io import netif as N
from abi.io.xenbus import XenbusStateClosed, XenbusStateClosing, XenbusStateInitWait
from pvguest.examples import write_report
from pvguest.netfront import Netfront, eth_frame

BROADCAST = b"\xff" * 6
ETHERTYPE_TEST = 0x88B5         # IEEE 802 local experimental: stays on the bridge


def _report(kernel, report: dict) -> None:
    write_report(kernel, "netcheck", report)
    time.sleep(float(kernel.params.get("linger", "0")))     # stay up for the test to look at the vifs


def _frames(results) -> list[bytes]:
    return [r for r in results if isinstance(r, bytes)]


def _exchange(a: Netfront, b: Netfront, payloads: list[bytes], timeout: float = 10.0) -> list[bool]:
    """Send each payload from a to b's MAC; whether each arrived intact (other frames are ignored)."""
    for p in payloads:
        while not a.send(eth_frame(b.mac, a.mac, ETHERTYPE_TEST, p)):
            a.kernel.wait(0.05)
    wanted = [eth_frame(b.mac, a.mac, ETHERTYPE_TEST, p) for p in payloads]
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not all(w in got for w in wanted) and time.monotonic() < deadline:
        got += _frames(b.receive(timeout=0.5))
    return [w in got for w in wanted]


def loop(kernel, *args) -> None:
    report: dict = {}
    try:
        a, b = Netfront(kernel, 0), Netfront(kernel, 1)
        report["macs"] = [a.mac.hex(":"), b.mac.hex(":")]
        # the first frame floods (b's MAC unknown), b's answer teaches the bridge both
        sizes = [60, 1514, 4000, 9000, 60000]
        payloads = [bytes((i + n) & 0xFF for i in range(size - 14)) for n, size in enumerate(sizes)]
        report["a_to_b"] = _exchange(a, b, payloads)
        report["b_to_a"] = _exchange(b, a, payloads[:2])
        # every slot a sent is answered; wait for all of them (a response may still be on its way)
        report["tx_statuses"] = sorted(set(a.wait_tx(a.rings.next_tx_id)))
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)


def hostile(kernel, *args) -> None:
    """Hostile TX entries on vif 0, one case at a time; vif 1 must keep working throughout."""
    report: dict = {}
    try:
        bad, good, other = Netfront(kernel, 0), Netfront(kernel, 1), Netfront(kernel, 2)
        ring = bad.rings
        gref = ring.tx_free[0].gref
        ungranted = 4000
        foreign = kernel.gnttab.grant_access(kernel.domid + 100, kernel.pages.alloc())   # granted, not to dom0
        cases = {
            "foreign_gref": [(foreign, 0, 0, 3, 60)],
            "runt": [(gref, 0, 0, 1, 8)],
            "bad_gref": [(ungranted, 0, 0, 2, 60)],
            "too_many_slots": [(gref, 0, N.NETTXF_more_data if i < 18 else 0, 10 + i, 19 * 60 if i == 0 else 60)
                               for i in range(19)],
        }
        for name, requests in cases.items():
            before = len(ring.tx_statuses)
            ring.raw_tx(requests)
            if ring.push_tx():
                bad.kick()
            statuses = bad.wait_tx(before + len(requests))[before:]
            report[name] = sorted(set(statuses))
        report["good_after_drops"] = _exchange(good, other, [b"still here".ljust(50, b".")])
        # a chain that never ends: the backend stops this vif and says why
        ring.raw_tx([(gref, 0, N.NETTXF_more_data, 99, 200)])
        if ring.push_tx():
            bad.kick()
        deadline = time.monotonic() + 10
        error = ""
        while time.monotonic() < deadline and not error:
            try:
                error = kernel.xenbus.read(f"{bad.backend_path}/error").decode()
            except Exception:
                time.sleep(0.05)
        report["fatal_error"] = error
        report["good_after_fatal"] = _exchange(good, other, [b"and still".ljust(50, b".")])
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)


def starve(kernel, *args) -> None:
    """vif 1 never reposts RX buffers; vif 0 sends it many frames; both stay up."""
    report: dict = {}
    try:
        sender, starving, other = Netfront(kernel, 0), Netfront(kernel, 1, rx_buffers=4), Netfront(kernel, 2)
        payload = struct.pack("!I", 0).ljust(100, b"x")
        # teach the bridge where starving's MAC is
        starving.send(eth_frame(BROADCAST, starving.mac, ETHERTYPE_TEST, payload))
        sent = 0
        for _ in range(2000):
            if sender.send(eth_frame(starving.mac, sender.mac, ETHERTYPE_TEST, payload)):
                sent += 1
            else:
                sender.kernel.wait(0.01)
        report["sent"] = sent
        got = _frames(starving.rings.receive())
        kernel.wait(1.0)
        got += _frames(starving.rings.receive())
        report["received_without_reposting"] = len(got)
        report["sender_ok"] = _exchange(sender, other, [b"self".ljust(50, b".")])
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)


def hotplug(kernel, *args) -> None:
    """Follow vifs as they come and go (what netfront's xenbus probe/remove do), for `seconds`."""
    xs = kernel.xenbus
    home = xs.get_domain_path(kernel.domid)
    fronts: dict[str, Netfront] = {}
    deadline = time.monotonic() + float(kernel.params.get("seconds", "120"))
    while time.monotonic() < deadline:
        try:
            devids = xs.directory(f"{home}/device/vif")
        except Exception:
            devids = []
        for devid in devids:
            try:
                backend = xs.read(f"{home}/device/vif/{devid}/backend").decode()
                state = int(xs.read(f"{backend}/state"))
            except Exception:
                continue
            if state == XenbusStateInitWait and devid not in fronts:
                fronts[devid] = Netfront(kernel, int(devid))
                xs.write(f"{home}/data/vifs", " ".join(sorted(fronts)))
            elif state == XenbusStateClosing:
                xs.write(f"{home}/device/vif/{devid}/state", str(XenbusStateClosed))
                fronts.pop(devid, None)
                xs.write(f"{home}/data/vifs", " ".join(sorted(fronts)))
        kernel.wait(0.1)

"""netback: the "vif" device kind of dom0.xenbus, and the network (bridges, uplinks) it plugs into.

``VifKind`` is what dom0.xenbus.XenbusBackends calls: ``features`` publishes
what Linux 6.1's xen-netfront looks for (``feature-rx-copy`` above all: without
it netfront refuses the device; ``feature-sg``; no GSO, one queue, no split
event channels, no control ring), and starts the vif's passt uplink when it
has ``forward=`` (a missing passt refuses the device in one line).
``connect`` checks the frontend's keys (``request-rx-copy`` must be 1: page
flipping is not offered), maps the TX and RX rings, binds the event channel
and attaches a ``VifPort`` to the vif's bridge.

``Network`` holds the bridges (made on first use, by name), the passt
uplinks and the TAP devices of ``script=vif-bridge`` vifs (dom0/net/tap.py:
such a vif's port talks to its TAP where it would talk to a bridge), and moves frames: a port's TX frames go to its bridge, which
queues them on the ports they are for; queued frames are written into the
guests' RX buffers right after (``flush``), one grant-copy batch per port.
"""
from __future__ import annotations

import logging
import os
import time

from dom0.net.bridge import Bridge
from dom0.net.netif import NetifEngine, NetifFatal
from dom0.net.tap import TapError, TapLink
from dom0.net.uplink import PasstUplink, UplinkError, UplinkGuard
from dom0.net.vif import VifSettings, settings_from_backend
from dom0.timeline import recorder
from dom0.xenbus import DeviceError, parse_uint

log = logging.getLogger("dom0.net")

TX_ROUNDS = 8           # budgets of packets taken per kick before the loop moves on
# A frontend asleep on answered slots this long is kicked again: a backstop only.
# It was 0.5 s while events were lost in the hypervisor (PvEntry.post applied an event
# beside running guest code); it stays for anything else that may drop one, e.g. the
# guest's barriers under the software CPU, which need not be host barriers.
REKICK_SECONDS = 5.0

FEATURES = {
    "feature-rx-copy": "1",
    "feature-rx-flip": "0",
    "feature-sg": "1",
    "feature-gso-tcpv4": "0",
    "feature-gso-tcpv6": "0",
    "feature-ipv6-csum-offload": "1",
    "feature-multicast-control": "0",
}


def port_name(domid: int, devid: int) -> str:
    """Xen's name of a vif's host-side interface: vifDOMID.DEVID."""
    return f"vif{domid}.{devid}"


class VifPort:
    """A bridge port whose frames come from, and go to, one guest's netif rings."""

    def __init__(self, network: "Network", device, engine: NetifEngine, settings: VifSettings):
        self.network = network
        self.device = device
        self.engine = engine
        self.settings = settings
        self.name = port_name(device.domid, device.devid)
        self.bridge = network.taps.get(self.name) or network.bridge(settings.bridge)
        self.last_notify = time.monotonic()

    def notify(self) -> None:
        self.last_notify = time.monotonic()
        self.device.notify()

    def deliver(self, frame: bytes) -> None:
        if recorder.enabled:
            recorder.instant("netback", "rx frame", bytes=len(frame), vif=self.name)
        if self.engine.queue_rx(frame):
            self.network.dirty.add(self)

    def flush_rx(self) -> None:
        try:
            if self.engine.service_rx():
                self.notify()
        except NetifFatal as e:
            self.device.fault(str(e))

    # --- Connection ---

    def rings(self) -> dict[str, tuple[memoryview, int, int, int]]:
        """For `pvhyp inspect DOM --rings` (dom0/toolstack/inspect.py): the shared page and
        the private indexes of each ring this connection serves."""
        return {name: (r.sring.page, r.req_cons, r.rsp_prod_pvt, r.nr_ents)
                for name, r in (("tx", self.engine.tx), ("rx", self.engine.rx))}

    def on_event(self) -> None:
        try:
            for _ in range(TX_ROUNDS):
                frames, notify = self.engine.service_tx()
                if notify:
                    self.notify()
                for frame in frames:
                    if recorder.enabled:    # the timeline: each frame the guest sent, on netback's track
                        recorder.instant("netback", "tx frame", bytes=len(frame), vif=self.name)
                    self.bridge.input(self.name, frame)
                if not self.engine.tx_pending():
                    break
        except NetifFatal as e:
            self.device.fault(str(e))
        self.network.dirty.add(self)        # buffers may have been posted: fill them
        self.network.flush()
        # called on dom0's periodic pass too: a wakeup lost on its way must not stall the guest
        if time.monotonic() - self.last_notify > REKICK_SECONDS and self.engine.asleep_on_responses():
            self.engine.counters.rekicks += 1
            self.notify()

    def disconnect(self) -> None:
        self.network.dirty.discard(self)
        self.bridge.detach(self.name)
        log.info("%s: disconnected (%s)", self.name, self.engine.counters.as_dict())


class Network:
    """dom0's bridges and uplinks, and the vif device kind plugged into dom0.xenbus."""

    def __init__(self, copier, run_dir: str, add_reader, remove_reader):
        self.copier = copier
        self.work_dir = os.path.join(run_dir, "net")
        self.add_reader = add_reader
        self.remove_reader = remove_reader
        self.bridges: dict[str, Bridge] = {}
        self.uplinks: dict[str, PasstUplink] = {}     # by owning vif's port name
        self.taps: dict[str, TapLink] = {}            # script=vif-bridge vifs, by port name
        self.ports: dict[str, VifPort] = {}
        self.dirty: set[VifPort] = set()
        self.kind = VifKind(self)

    def bridge(self, name: str) -> Bridge:
        if name not in self.bridges:
            self.bridges[name] = Bridge(name)
        return self.bridges[name]

    def flush(self) -> None:
        while self.dirty:
            self.dirty.pop().flush_rx()

    def start_uplink(self, domid: int, settings: VifSettings) -> None:
        owner = port_name(domid, settings.devid)
        self.stop_uplink(owner)
        if not settings.forwards and not settings.outbound:
            return
        bridge = self.bridge(settings.bridge)
        guard = UplinkGuard(owner, settings.forwards, settings.outbound)
        uplink = PasstUplink(f"passt-{owner}", bridge, guard, settings.forwards, self.work_dir,
                             self.add_reader, self.remove_reader, guest_ip=settings.guest_ip)
        uplink.on_frames = self.flush
        uplink.start()          # UplinkError: one line for the toolstack
        bridge.attach(uplink, guard.allow)
        self.uplinks[owner] = uplink

    def stop_uplink(self, owner: str) -> None:
        uplink = self.uplinks.pop(owner, None)
        if uplink is not None:
            uplink.bridge.detach(uplink.name)
            uplink.stop()

    def start_tap(self, domid: int, settings: VifSettings) -> None:
        name = port_name(domid, settings.devid)
        self.stop_tap(name)
        tap = TapLink.open(name, settings.bridge, self.add_reader, self.remove_reader)
        tap.on_frames = self.flush
        self.taps[name] = tap

    def stop_tap(self, name: str) -> None:
        tap = self.taps.pop(name, None)
        if tap is not None:
            tap.close()

    def released(self, device) -> None:
        """dom0.xenbus's release callback: a vif went; its uplink goes with it."""
        if device.kind.name == VifKind.name:
            name = port_name(device.domid, device.devid)
            self.ports.pop(name, None)
            self.stop_uplink(name)
            self.stop_tap(name)

    def periodic(self) -> None:
        for uplink in self.uplinks.values():
            uplink.flush()
        self.flush()

    def backlogged(self) -> bool:
        """Frames wait for an uplink's full socket: dom0's loop comes back soon to push them."""
        return any(uplink.pending for uplink in self.uplinks.values())

    def status(self, domid: int, devid: int) -> dict:
        name = port_name(domid, devid)
        port = self.ports.get(name)
        out: dict = {"port": name}
        if port is not None:
            out["counters"] = port.engine.counters.as_dict()
            out["bridge"] = port.bridge.name
            out["rings"] = port.engine.ring_state()
            if port.engine.fatal:
                out["fatal"] = port.engine.fatal
        if name in self.taps:
            out["tap"] = dict(self.taps[name].counters)
        uplink = self.uplinks.get(name)
        if uplink is not None:
            out["uplink"] = {"dropped": uplink.guard.dropped, "allowed": uplink.guard.allowed,
                             "send_dropped": uplink.send_dropped, "down": uplink.down_reason}
        return out

    def close(self) -> None:
        for owner in list(self.uplinks):
            self.stop_uplink(owner)
        for name in list(self.taps):
            self.stop_tap(name)


class VifKind:
    name = "vif"

    def __init__(self, network: Network):
        self.network = network

    def features(self, device) -> dict[str, str]:
        settings = settings_from_backend(device.params, device.devid)
        try:
            self.network.start_uplink(device.domid, settings)
            if settings.tap:
                self.network.start_tap(device.domid, settings)
        except (UplinkError, TapError, OSError, ValueError) as e:
            raise DeviceError(str(e)) from None
        return dict(FEATURES)

    def connect(self, device, frontend: dict[str, str]) -> VifPort:
        if parse_uint(frontend, "request-rx-copy", 1, default=0) != 1:
            raise DeviceError("the frontend did not set request-rx-copy (page flipping is not offered)")
        if parse_uint(frontend, "multi-queue-num-queues", 0xFFFF, default=1) > 1:
            raise DeviceError("the frontend asked for several queues (multi-queue is not offered)")
        (tx_page,) = device.map_ring(frontend, "tx-ring-ref")
        (rx_page,) = device.map_ring(frontend, "rx-ring-ref")
        device.bind_event(frontend, "event-channel")
        rx_sg = parse_uint(frontend, "feature-sg", 1, default=0) == 1
        settings = settings_from_backend(device.params, device.devid)
        engine = NetifEngine(device.domid, tx_page, rx_page, self.network.copier, rx_sg=rx_sg)
        port = VifPort(self.network, device, engine, settings)
        port.bridge.attach(port)
        self.network.ports[port.name] = port
        log.info("%s: connected to bridge %s (mac %s, rx-sg %s)", port.name, settings.bridge, settings.mac, rx_sg)
        return port

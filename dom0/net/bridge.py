"""A bridge: the learning L2 switch in dom0 that joins vifs (and an uplink) with no privileges.

``Switch`` is the sans-IO core: given the port a frame came in on, it learns
the source MAC and answers the ports to send it to.  ``Bridge`` wraps it
with the ports themselves (anything with ``name`` and ``deliver(frame)``).

Rules:
  - a frame shorter than an Ethernet header is dropped (counted on its port);
  - the source MAC is learnt for the ingress port unless it is multicast
    (a forged broadcast source would blackhole everyone);
  - a known unicast destination goes to its port only (never back out of
    the ingress port); broadcast, multicast and unknown unicast are flooded
    to every other port;
  - the MAC table holds at most ``max_macs`` entries (a guest spraying
    random sources evicts the oldest entry, it does not grow dom0) and
    entries older than ``max_age`` seconds are forgotten;
  - a port may carry a guard (``allow(frame) -> bool``) consulted for every
    frame about to leave through it: the uplink's, which drops (and counts)
    what a guest may not send off the bridge;
  - every port counts frames and bytes in/out and drops.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Protocol

MAX_MACS = 1024
MAX_AGE = 300.0
ETH_HLEN = 14


class Port(Protocol):
    name: str

    def deliver(self, frame: bytes) -> None: ...


@dataclass
class PortCounters:
    rx_frames: int = 0          # into the bridge from this port
    rx_bytes: int = 0
    tx_frames: int = 0          # out of the bridge to this port
    tx_bytes: int = 0
    dropped: int = 0            # malformed on the way in, or refused by the port's guard

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Switch:
    def __init__(self, max_macs: int = MAX_MACS, max_age: float = MAX_AGE):
        self.max_macs = max_macs
        self.max_age = max_age
        self.macs: collections.OrderedDict[bytes, tuple[str, float]] = collections.OrderedDict()
        self.ports: dict[str, PortCounters] = {}
        self.guards: dict[str, Callable[[str, bytes], bool]] = {}

    def add_port(self, name: str, guard: Callable[[str, bytes], bool] | None = None) -> None:
        self.ports[name] = PortCounters()
        if guard is not None:
            self.guards[name] = guard

    def remove_port(self, name: str) -> None:
        self.ports.pop(name, None)
        self.guards.pop(name, None)
        for mac in [m for m, (p, _) in self.macs.items() if p == name]:
            del self.macs[mac]

    def _learn(self, mac: bytes, port: str, now: float) -> None:
        if mac[0] & 1:
            return
        self.macs.pop(mac, None)
        self.macs[mac] = (port, now)
        while len(self.macs) > self.max_macs:
            self.macs.popitem(last=False)

    def lookup(self, mac: bytes, now: float) -> str | None:
        entry = self.macs.get(mac)
        if entry is None:
            return None
        port, seen = entry
        if now - seen > self.max_age or port not in self.ports:
            del self.macs[mac]
            return None
        return port

    def forward(self, in_port: str, frame: bytes, now: float) -> list[str]:
        """The ports `frame` (from `in_port`) goes out of, counted; [] if dropped."""
        counters = self.ports.get(in_port)
        if counters is None:
            return []
        if len(frame) < ETH_HLEN:
            counters.dropped += 1
            return []
        counters.rx_frames += 1
        counters.rx_bytes += len(frame)
        dst, src = frame[0:6], frame[6:12]
        self._learn(src, in_port, now)
        known = None if dst[0] & 1 else self.lookup(dst, now)
        targets = [known] if known is not None and known != in_port else (
            [] if known == in_port else [p for p in self.ports if p != in_port])
        out = []
        for port in targets:
            guard = self.guards.get(port)
            if guard is not None and not guard(in_port, frame):
                self.ports[port].dropped += 1
                continue
            self.ports[port].tx_frames += 1
            self.ports[port].tx_bytes += len(frame)
            out.append(port)
        return out


class Bridge:
    """A named switch with its ports; `input` is called by a port with each frame it produced."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic, **switch_args):
        self.name = name
        self.clock = clock
        self.switch = Switch(**switch_args)
        self.ports: dict[str, Port] = {}

    def attach(self, port: Port, guard: Callable[[str, bytes], bool] | None = None) -> None:
        self.ports[port.name] = port
        self.switch.add_port(port.name, guard)

    def detach(self, name: str) -> None:
        self.ports.pop(name, None)
        self.switch.remove_port(name)

    def input(self, in_port: str, frame: bytes) -> None:
        for name in self.switch.forward(in_port, frame, self.clock()):
            self.ports[name].deliver(frame)

    def counters(self) -> dict:
        return {name: c.as_dict() for name, c in self.switch.ports.items()}

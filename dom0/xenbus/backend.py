"""Split-driver backends in dom0: xenstore entries, the handshake, rings, event channels, grants.

One `XenbusBackends` per dom0 serves every device kind (blkif "vbd",
netif "vif", ...).  For each device the toolstack has written the entries
(`entries.write_device`) and called `plug`; from then on:

* the backend publishes the kind's features (`DeviceKind.features`) and
  goes InitWait; it watches the frontend's directory and feeds the
  frontend's `state` to the device's `BackendMachine` (states.py, the rules);
* on `connect` it reads the frontend's keys and hands them to
  `DeviceKind.connect`, which maps the rings (`BackendDevice.map_ring`),
  binds the event channel (`bind_event`), makes a `GrantCache` for data
  pages, and returns the `Connection`; a `DeviceError` (bad or missing key,
  a ring ref not granted to dom0) refuses the frontend and closes;
* events on a bound port, and a periodic pass (an event may be lost or
  never sent), call `Connection.on_event`; a connection that finds its
  frontend hostile calls `BackendDevice.fault(reason)`: logged, the
  connection is torn down, the backend goes Closing;
* `disconnect` unbinds, unmaps every ring and grant page (dom0 keeps no
  view of guest memory) and tells the connection; `release` also removes
  the device's xenstore entries.

Nothing a frontend writes may raise out of here: every xenstore value is
parsed defensively, and a connection's own exception is logged and treated
as a fault of that device only.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

from abi.io.xenbus import XenbusStateClosed
from dom0.timeline import TRACK_OF_KIND, recorder
from dom0.xenbus import entries
from dom0.xenbus import states as S
from dom0.xenbus.grants import GrantCache, GrantMapError, GrantMapper, Mapping
from dom0.xenbus.interfaces import EventChannelOps, Xenstore
from dom0.xenbus.ring import BackRingPages
from pvguest.evtchn import EventChannelError

log = logging.getLogger("dom0.xenbus")

MAX_FRONTEND_KEYS = 64          # a frontend directory with more is not read (hostile)
MAX_RING_PAGE_ORDER = 4         # what any backend here offers at most (16 pages)


class DeviceError(Exception):
    """The frontend's details cannot be used (one line, logged and written as the device's error)."""


class Connection(Protocol):
    def on_event(self) -> None:
        """Kicked, or the periodic pass: do the waiting work (never raises for frontend input)."""

    def disconnect(self) -> None:
        """The device is going: finish or drop in-flight work; rings and grants go afterwards."""


class DeviceKind(Protocol):
    name: str       # xenstore's device kind: "vbd", "vif"

    def features(self, device: BackendDevice) -> dict[str, str]:
        """Keys to publish in the backend directory before InitWait (DeviceError: unusable)."""

    def connect(self, device: BackendDevice, frontend: dict[str, str]) -> Connection:
        """Start serving the frontend whose keys are `frontend` (DeviceError: refused)."""

    # optional: release(device) -> None, called once when the device goes for good


def parse_uint(frontend: dict[str, str], key: str, limit: int, default: int | None = None) -> int:
    """A frontend key as an integer in 0..limit, or DeviceError naming the key."""
    text = frontend.get(key)
    if text is None:
        if default is None:
            raise DeviceError(f"frontend key {key!r} missing")
        return default
    text = text.strip()
    if not text.isdigit() or len(text) > 20 or int(text) > limit:
        raise DeviceError(f"frontend key {key!r} = {text[:40]!r} is not a number up to {limit}")
    return int(text)


class BackendDevice:
    """One device instance: its paths, its state machine, and what its connection holds."""

    def __init__(self, backends: XenbusBackends, kind: DeviceKind, domid: int, devid: int):
        self.backends = backends
        self.kind = kind
        self.domid = domid
        self.devid = devid
        self.backend_path = entries.backend_path(kind.name, domid, devid)
        self.frontend_path = entries.frontend_path(kind.name, domid, devid)
        self.machine = S.BackendMachine()
        self.params: dict[str, str] = {}
        self.connection: Connection | None = None
        self.ports: list[int] = []
        self.ring_mappings: list[Mapping] = []
        self.caches: list[GrantCache] = []
        self.fault_reason: str | None = None
        self.error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind.name} d{self.domid}/{self.devid}"

    @property
    def token(self) -> str:
        return f"{self.kind.name}/{self.domid}/{self.devid}"

    # --- for device kinds, while connecting ---

    def map_ring(self, frontend: dict[str, str], ref_key: str = "ring-ref",
                 max_order: int = 0) -> list[memoryview]:
        """The ring's pages, writable: `ref_key`, or `ring-page-order` + `ring-ref0..N-1`."""
        order = parse_uint(frontend, "ring-page-order", max_order, default=0) if max_order else 0
        if "ring-page-order" in frontend and max_order:
            refs = [parse_uint(frontend, f"{ref_key}{i}", 0xFFFFFFFF) for i in range(1 << order)]
        else:
            refs = [parse_uint(frontend, ref_key, 0xFFFFFFFF)]
        mapped = self.backends.mapper.map(self.domid, refs, True)
        good = [m for m in mapped if isinstance(m, Mapping)]
        self.ring_mappings += good
        bad = [m for m in mapped if isinstance(m, GrantMapError)]
        if bad:
            raise DeviceError(f"ring page not mapped: {bad[0]}")
        return [m.view for m in good]

    def back_ring(self, pages: list[memoryview], entry_size: int) -> BackRingPages:
        return BackRingPages(pages, entry_size)

    def bind_event(self, frontend: dict[str, str], key: str = "event-channel") -> int:
        """Bind the frontend's unbound port; events on it call the connection's on_event."""
        remote = parse_uint(frontend, key, 0xFFFFFFFF)
        try:
            port = self.backends.evtchn.bind_interdomain(self.domid, remote)
        except EventChannelError as e:
            raise DeviceError(f"binding event channel {remote} of d{self.domid}: {e}") from None
        self.ports.append(port)
        self.backends.port_owner[port] = self
        return port

    def grant_cache(self, persistent: bool, max_persistent: int = 1056) -> GrantCache:
        cache = GrantCache(self.backends.mapper, self.domid, persistent, max_persistent)
        self.caches.append(cache)
        return cache

    # --- for connections ---

    def notify(self, port: int | None = None) -> None:
        """Kick the frontend (on the first bound port unless told)."""
        if not self.ports:
            return
        if recorder.enabled:            # the timeline: a flow from here to the frontend's upcall
            recorder.instant(TRACK_OF_KIND.get(self.kind.name, self.kind.name), "notify frontend",
                             port=self.ports[0] if port is None else port, frontend=self.domid)
        try:
            self.backends.evtchn.send(self.ports[0] if port is None else port)
        except EventChannelError as e:
            log.warning("%s: notifying the frontend failed: %s", self.name, e)

    def fault(self, reason: str) -> None:
        """The frontend broke the protocol: disconnect it (after the current call returns)."""
        if self.fault_reason is None:
            self.fault_reason = reason

    def write(self, key: str, value: str) -> None:
        self.backends.xs.write(f"{self.backend_path}/{key}", value)

    # --- for XenbusBackends ---

    def teardown(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except Exception:
                log.exception("%s: disconnect failed", self.name)
        for port in self.ports:
            self.backends.port_owner.pop(port, None)
            try:
                self.backends.evtchn.close(port)
            except EventChannelError as e:
                log.info("%s: closing port %d: %s", self.name, port, e)
        self.ports = []
        for cache in self.caches:
            cache.release()
        self.caches = []
        if self.ring_mappings:
            self.backends.mapper.unmap(self.ring_mappings)
            self.ring_mappings = []


class XenbusBackends:
    """Every backend device of this dom0, driven from its event loop (`poll`, `on_ports`)."""

    def __init__(self, xs: Xenstore, evtchn: EventChannelOps, mapper: GrantMapper,
                 kinds: list[DeviceKind]):
        self.xs = xs                    # a LocalClient of its own: its watch events are ours alone
        self.evtchn = evtchn
        self.mapper = mapper
        self.kinds = {k.name: k for k in kinds}
        self.devices: dict[tuple[str, int, int], BackendDevice] = {}
        self.port_owner: dict[int, BackendDevice] = {}
        self.on_release: list[Callable[[BackendDevice], None]] = []

    # --- the toolstack's side ---

    def plug(self, kind: str, domid: int, devid: int) -> BackendDevice:
        """Start the backend of a device whose entries are written; DeviceError if unusable."""
        key = (kind, domid, devid)
        if key in self.devices:
            raise DeviceError(f"{kind} {devid} of d{domid} is already plugged")
        device = BackendDevice(self, self.kinds[kind], domid, devid)
        device.params = self._read_dir(device.backend_path)
        features = device.kind.features(device)         # may raise DeviceError: nothing to undo
        self.devices[key] = device
        with self.xs.transaction() as t:
            for k, v in features.items():
                t.write(f"{device.backend_path}/{k}", v)
            t.write(f"{device.backend_path}/state", str(device.machine.state))
        self.xs.watch(device.frontend_path, device.token)
        log.info("%s: plugged (%s)", device.name, ", ".join(f"{k}={v}" for k, v in features.items()))
        return device

    def unplug(self, kind: str, domid: int, devid: int) -> bool:
        """xl block-detach/network-detach: ask the frontend to close; False if no such device."""
        device = self.devices.get((kind, domid, devid))
        if device is None:
            return False
        self.xs.write(f"{device.backend_path}/online", "0")
        self._run(device, device.machine.handle(S.UNPLUG))
        return True

    def force_remove(self, kind: str, domid: int, devid: int) -> bool:
        device = self.devices.get((kind, domid, devid))
        if device is None:
            return False
        self._run(device, device.machine.handle(S.DESTROY))
        return True

    def destroy_domain(self, domid: int) -> None:
        """Before the domain goes: disconnect and release its devices (unmapping its pages)."""
        for device in [d for d in self.devices.values() if d.domid == domid]:
            self._run(device, device.machine.handle(S.DESTROY))

    def devices_of(self, domid: int, kind: str | None = None) -> list[BackendDevice]:
        return sorted((d for d in self.devices.values()
                       if d.domid == domid and (kind is None or d.kind.name == kind)),
                      key=lambda d: (d.kind.name, d.devid))

    # --- the event loop's side ---

    def on_ports(self, ports: Iterable[int]) -> None:
        for port in ports:
            device = self.port_owner.get(port)
            if device is not None:
                started = recorder.now() if recorder.enabled else None
                self._service(device)
                if started is not None:     # the timeline: the kick's handling, where flows arrive
                    recorder.slice(TRACK_OF_KIND.get(device.kind.name, device.kind.name), f"{device.name} kick",
                                   started, port=port, frontend=device.domid)

    def poll(self) -> None:
        """Watch events, then every connection once (catches lost events)."""
        for _path, token in self.xs.take_events():
            device = self._by_token(token.decode(errors="replace"))
            if device is not None:
                self._frontend_changed(device)
        for device in list(self.devices.values()):
            if device.connection is not None:
                self._service(device)

    def close(self) -> None:
        for device in list(self.devices.values()):
            self._run(device, device.machine.handle(S.DESTROY))

    # --- inside ---

    def _by_token(self, token: str) -> BackendDevice | None:
        parts = token.split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return self.devices.get((parts[0], int(parts[1]), int(parts[2])))

    def _read_dir(self, path: str) -> dict[str, str]:
        try:
            names = self.xs.directory(path)
        except Exception:
            return {}
        values = {}
        for name in names[:MAX_FRONTEND_KEYS]:
            raw = self.xs.read(f"{path}/{name}")
            if raw is not None:
                values[name] = raw.decode("utf-8", errors="replace")
        return values

    def _frontend_changed(self, device: BackendDevice) -> None:
        fstate = S.parse_state(self.xs.read(f"{device.frontend_path}/state"))
        self._run(device, device.machine.frontend(fstate))

    def _service(self, device: BackendDevice) -> None:
        if device.connection is None:
            return
        try:
            device.connection.on_event()
        except Exception as e:
            log.exception("%s: the connection failed", device.name)
            device.fault(f"backend error: {e}")
        if device.fault_reason is not None:
            reason, device.fault_reason = device.fault_reason, None
            log.warning("%s: disconnecting the frontend: %s", device.name, reason)
            device.error = reason
            self._write_error(device, reason)
            self._run(device, device.machine.handle(S.FAULT))

    def _write_error(self, device: BackendDevice, reason: str) -> None:
        try:
            device.write("error", reason[:200])
        except Exception:
            pass

    def _run(self, device: BackendDevice, step: S.Step) -> None:
        """Carry out a Step: actions first (so the frontend sees a state only once it is true)."""
        for action in step.actions:
            if action == S.CONNECT:
                self._connect(device)
                return          # _connect runs the follow-up step itself
            if action == S.DISCONNECT:
                device.teardown()
            elif action == S.RELEASE:
                self._release(device)
                return
        if step.state is not None:
            self._publish(device, step.state)

    def _publish(self, device: BackendDevice, state: int) -> None:
        try:
            device.write("state", str(state))
        except Exception as e:
            log.warning("%s: publishing state %s: %s", device.name, S.state_name(state), e)
        log.info("%s: backend %s", device.name, S.state_name(state))

    def _connect(self, device: BackendDevice) -> None:
        frontend = self._read_dir(device.frontend_path)
        try:
            device.connection = device.kind.connect(device, frontend)
        except DeviceError as e:
            log.warning("%s: refusing the frontend: %s", device.name, e)
            device.error = str(e)
            device.teardown()
            self._write_error(device, str(e))
            self._run(device, device.machine.handle(S.CONNECT_FAILED))
            return
        except Exception as e:
            log.exception("%s: connecting failed", device.name)
            device.error = f"backend error: {e}"
            device.teardown()
            self._run(device, device.machine.handle(S.CONNECT_FAILED))
            return
        self._run(device, device.machine.handle(S.CONNECTED))
        self._service(device)       # requests may be waiting already

    def _release(self, device: BackendDevice) -> None:
        device.teardown()
        self.devices.pop((device.kind.name, device.domid, device.devid), None)
        try:
            self.xs.unwatch(device.frontend_path, device.token)
        except Exception:
            pass
        release = getattr(device.kind, "release", None)     # optional: the kind's own resources
        if release is not None:
            try:
                release(device)
            except Exception:
                log.exception("%s: releasing", device.name)
        for callback in self.on_release:
            try:
                callback(device)
            except Exception:
                log.exception("%s: release callback", device.name)
        entries.remove_device(self.xs, device.kind.name, device.domid, device.devid)
        log.info("%s: released", device.name)

    def state_of(self, device: BackendDevice) -> str:
        """The backend state's name, as published (a released device is Closed)."""
        return S.state_name(XenbusStateClosed if device.machine.released else device.machine.state)

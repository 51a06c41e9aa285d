"""The toolstack's vifs: `vif = [...]` at create, `network-attach/-detach/-list` on a running guest.

As libxl: a vif's devid is the next free number of the domain, its entries
are written in both directories (dom0.xenbus.entries.write_device: the
frontend's ``handle`` and ``mac``; the backend's ``handle``, ``mac``,
``bridge``, ``script``, ``type`` and pvhyp's ``forward``/``outbound``), then
the backend is plugged (dom0.xenbus), which starts the vif's passt uplink if
it has forwards.  Detach asks the frontend to close (``online`` = 0 and the
backend Closing), as ``xl network-detach`` does; destroy tears every device
down with the domain.
"""
from __future__ import annotations

import logging

from dom0.net.netback import Network
from dom0.net.vif import VifSettings, settings_from_spec
from dom0.toolstack.config import parse_vif
from dom0.xenbus import DeviceError, XenbusBackends
from dom0.xenbus.entries import remove_device, write_device

log = logging.getLogger("dom0.toolstack")
KIND = "vif"


class NetworkError(Exception):
    """One line for the user (the toolstack turns it into its own error)."""


class Vifs:
    def __init__(self, xs, backends: XenbusBackends, network: Network):
        self.xs = xs
        self.backends = backends
        self.network = network

    def _devids(self, domid: int) -> list[int]:
        return [d.devid for d in self.backends.devices_of(domid, KIND)]

    def plug(self, domid: int, settings: VifSettings) -> VifSettings:
        if settings.devid in self._devids(domid):
            raise NetworkError(f"d{domid} already has vif {settings.devid}")
        write_device(self.xs, KIND, domid, settings.devid, settings.backend_keys(), settings.frontend_keys())
        try:
            self.backends.plug(KIND, domid, settings.devid)
        except DeviceError as e:
            remove_device(self.xs, KIND, domid, settings.devid)
            raise NetworkError(f"vif {settings.devid} of d{domid}: {e}") from None
        return settings

    def create_all(self, domid: int, name: str, specs) -> None:
        """The config's vifs, numbered 0.. in order (a devid= key overrides)."""
        for index, spec in enumerate(specs):
            try:
                settings = settings_from_spec(spec, name, index)
            except ValueError as e:
                raise NetworkError(f"vif {index}: {e}") from None
            self.plug(domid, settings)

    def attach(self, domid: int, name: str, spec_text: str) -> dict:
        try:
            spec = parse_vif(spec_text)
            used = self._devids(domid)
            settings = settings_from_spec(spec, name, max(used, default=-1) + 1)
        except ValueError as e:
            raise NetworkError(f"network-attach: {e}") from None
        self.plug(domid, settings)
        return {"devid": settings.devid, "mac": settings.mac, "bridge": settings.bridge}

    def detach(self, domid: int, which: str) -> dict:
        """By devid or by MAC, as xl network-detach."""
        for device in self.backends.devices_of(domid, KIND):
            if which == str(device.devid) or which.lower() == device.params.get("mac", "").lower():
                self.backends.unplug(KIND, domid, device.devid)
                return {"devid": device.devid}
        raise NetworkError(f"d{domid} has no vif {which!r}")

    def list(self, domid: int) -> dict:
        rows = []
        for device in self.backends.devices_of(domid, KIND):
            row = {"devid": device.devid, "mac": device.params.get("mac", ""),
                   "bridge": device.params.get("bridge", ""), "state": self.backends.state_of(device),
                   "backend": device.backend_path, "frontend": device.frontend_path}
            if device.error:
                row["error"] = device.error
            row.update(self.network.status(domid, device.devid))
            rows.append(row)
        return {"vifs": rows}

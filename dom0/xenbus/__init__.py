"""The backend side of Xen's split drivers, for every device kind dom0 serves.

    entries.py   the xenstore directories of a device (the toolstack writes them)
    states.py    the xenbus handshake as a sans-IO state machine (rules at its top)
    backend.py   XenbusBackends: plug/unplug, watches, connect/disconnect, event dispatch
    ring.py      the backend end of a request/response ring over granted pages
    grants.py    batched grant mapping and the persistent-grant cache

A device kind (dom0.block's "vbd", a network "vif") supplies `features`
and `connect`; its `Connection` gets `on_event` calls.
"""
from dom0.xenbus.backend import Connection, DeviceError, DeviceKind, XenbusBackends, parse_uint
from dom0.xenbus.grants import GrantCache, GrantMapError, GrantMapper

__all__ = ["Connection", "DeviceError", "DeviceKind", "GrantCache", "GrantMapError", "GrantMapper",
           "XenbusBackends", "parse_uint"]

"""The backend's half of the xenbus handshake: a sans-IO state machine.

Rules (what Linux's xen-blkback/xen-netback and QEMU's xen-bus do):

    backend state   event                        -> next state   actions
    InitWait        frontend Initialised|Connected  (same)       connect
    InitWait        connected                        Connected    -
    InitWait        connect-failed                   Closing      -
    Connected       fault (hostile ring, I/O bug)    Closing      disconnect
    any but Closed  frontend Closing                 Closing      disconnect
    any             frontend Closed                  Closed       disconnect (+ release when offline)
    Closed          frontend Initialising (online)   InitWait     -   (the frontend starts over)
    any             frontend Unknown (its dir gone)  (same)       disconnect, release
    any             unplug (toolstack)               Closing      - (Closed+release when already Closed)
    any             destroy (domain going away)      (same)       disconnect, release

Everything not in the table leaves the machine as it is.  `disconnect` is
asked only while a connection exists and `release` once; the machine never
does I/O: `BackendMachine.handle(event)` returns the `Step` (state to
publish, actions to run) and the caller (dom0.xenbus.backend) runs it.
"""
from __future__ import annotations

from dataclasses import dataclass

from abi.io.xenbus import (
    XENBUS_STATE_NAMES,
    XenbusStateClosed,
    XenbusStateClosing,
    XenbusStateConnected,
    XenbusStateInitialised,
    XenbusStateInitialising,
    XenbusStateInitWait,
    XenbusStateUnknown,
)

# events besides the frontend's states (given as ("frontend", state))
CONNECTED = "connected"             # the device kind accepted the frontend's details
CONNECT_FAILED = "connect-failed"   # ... or refused them
FAULT = "fault"                     # the connected device gave up on a hostile frontend
UNPLUG = "unplug"                   # toolstack: block-detach and friends (online = 0)
DESTROY = "destroy"                 # toolstack: the domain is being destroyed

CONNECT = "connect"
DISCONNECT = "disconnect"
RELEASE = "release"


@dataclass(frozen=True)
class Step:
    state: int | None            # the backend's new state to publish, None: unchanged
    actions: tuple[str, ...]


NOTHING = Step(None, ())


def state_name(state: int | None) -> str:
    return XENBUS_STATE_NAMES.get(state if state is not None else -1, f"state {state}")


class BackendMachine:
    def __init__(self) -> None:
        self.state = XenbusStateInitWait      # published once the kind's features are written
        self.online = True
        self.connected = False
        self.released = False

    def _go(self, state: int | None, *actions: str) -> Step:
        if DISCONNECT in actions and not self.connected:
            actions = tuple(a for a in actions if a != DISCONNECT)
        if RELEASE in actions:
            if self.released:
                actions = tuple(a for a in actions if a != RELEASE)
            self.released = True
        if DISCONNECT in actions:
            self.connected = False
        if state is not None and state == self.state:
            state = None
        if state is not None:
            self.state = state
        return Step(state, actions)

    def frontend(self, fstate: int) -> Step:
        if self.released:
            return NOTHING
        s = self.state
        if fstate in (XenbusStateInitialised, XenbusStateConnected):
            return self._go(None, CONNECT) if s == XenbusStateInitWait and not self.connected else NOTHING
        if fstate == XenbusStateClosing:
            return self._go(XenbusStateClosing, DISCONNECT) if s != XenbusStateClosed else NOTHING
        if fstate == XenbusStateClosed:
            return self._go(XenbusStateClosed, DISCONNECT, *(() if self.online else (RELEASE,)))
        if fstate == XenbusStateInitialising:
            return self._go(XenbusStateInitWait) if s == XenbusStateClosed and self.online else NOTHING
        if fstate == XenbusStateUnknown:
            return self._go(None, DISCONNECT, RELEASE)
        return NOTHING          # InitWait, Reconfiguring, Reconfigured, garbage: not a backend's business

    def handle(self, event: str) -> Step:
        if self.released:
            return NOTHING
        if event == CONNECTED:
            self.connected = True
            return self._go(XenbusStateConnected)
        if event == CONNECT_FAILED:
            return self._go(XenbusStateClosing)
        if event == FAULT:
            return self._go(XenbusStateClosing, DISCONNECT) if self.connected else NOTHING
        if event == UNPLUG:
            self.online = False
            if self.state == XenbusStateClosed:
                return self._go(None, RELEASE)
            return self._go(XenbusStateClosing)
        if event == DESTROY:
            return self._go(None, DISCONNECT, RELEASE)
        raise ValueError(f"unknown backend event {event!r}")


def parse_state(raw: bytes | None) -> int:
    """A frontend's `state` node as a XenbusState; missing or garbage is Unknown (0)."""
    if raw is None:
        return XenbusStateUnknown
    text = raw.split(b"\0", 1)[0].strip()
    if not text.isdigit() or len(text) > 2:
        return XenbusStateUnknown
    value = int(text)
    return value if value in XENBUS_STATE_NAMES else XenbusStateUnknown


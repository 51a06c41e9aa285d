"""The xenbus backend state machine (dom0.xenbus.states): its rules, one transition at a time."""
from __future__ import annotations

from abi.io import xenbus as X
from dom0.xenbus import states as S


def machine(*steps) -> S.BackendMachine:
    m = S.BackendMachine()
    for step in steps:
        m.frontend(step) if isinstance(step, int) else m.handle(step)
    return m


def test_handshake_connects_once():
    m = S.BackendMachine()
    assert m.state == X.XenbusStateInitWait
    assert m.frontend(X.XenbusStateInitialising) == S.NOTHING
    assert m.frontend(X.XenbusStateInitialised) == S.Step(None, (S.CONNECT,))
    assert m.handle(S.CONNECTED) == S.Step(X.XenbusStateConnected, ())
    assert m.frontend(X.XenbusStateConnected) == S.NOTHING         # no second connect


def test_refused_frontend_closes():
    m = machine(X.XenbusStateInitialised)
    assert m.handle(S.CONNECT_FAILED) == S.Step(X.XenbusStateClosing, ())
    assert m.frontend(X.XenbusStateConnected) == S.NOTHING


def test_orderly_close_and_reconnect():
    m = machine(X.XenbusStateInitialised, S.CONNECTED)
    assert m.frontend(X.XenbusStateClosing) == S.Step(X.XenbusStateClosing, (S.DISCONNECT,))
    assert m.frontend(X.XenbusStateClosed) == S.Step(X.XenbusStateClosed, ())
    assert m.frontend(X.XenbusStateInitialising) == S.Step(X.XenbusStateInitWait, ())
    assert m.frontend(X.XenbusStateInitialised) == S.Step(None, (S.CONNECT,))


def test_unplug_waits_for_the_frontend_then_releases():
    m = machine(X.XenbusStateInitialised, S.CONNECTED)
    assert m.handle(S.UNPLUG) == S.Step(X.XenbusStateClosing, ())
    assert m.frontend(X.XenbusStateClosing) == S.Step(None, (S.DISCONNECT,))
    assert m.frontend(X.XenbusStateClosed) == S.Step(X.XenbusStateClosed, (S.RELEASE,))
    assert m.frontend(X.XenbusStateInitialising) == S.NOTHING      # released: deaf


def test_fault_disconnects_only_a_connected_device():
    assert machine().handle(S.FAULT) == S.NOTHING
    m = machine(X.XenbusStateInitialised, S.CONNECTED)
    assert m.handle(S.FAULT) == S.Step(X.XenbusStateClosing, (S.DISCONNECT,))
    assert m.handle(S.FAULT) == S.NOTHING


def test_frontend_gone_or_domain_destroyed_releases_once():
    m = machine(X.XenbusStateInitialised, S.CONNECTED)
    assert m.frontend(X.XenbusStateUnknown) == S.Step(None, (S.DISCONNECT, S.RELEASE))
    assert m.handle(S.DESTROY) == S.NOTHING
    assert machine().handle(S.DESTROY) == S.Step(None, (S.RELEASE,))


def test_unplug_of_a_closed_device_releases_at_once():
    m = machine(X.XenbusStateClosed)
    assert m.handle(S.UNPLUG) == S.Step(None, (S.RELEASE,))


def test_garbage_states_are_unknown():
    for raw in (None, b"", b"x", b"-1", b"99", b"400", b"12345678901234567890"):
        assert S.parse_state(raw) == X.XenbusStateUnknown
    assert S.parse_state(b"4") == S.parse_state(b"4\0junk") == X.XenbusStateConnected
    assert S.parse_state(b"9") == X.XenbusStateUnknown

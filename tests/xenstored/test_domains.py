"""INTRODUCE / RELEASE / RESUME / IS_DOMAIN_INTRODUCED / special watches /
CONTROL."""

from abi.io import xs_wire as wire


def test_introduce_and_release_fire_special_watches(dom0, engine):
    dom0.ok(wire.XS_WATCH, "@introduceDomain", "in")
    dom0.ok(wire.XS_WATCH, "@releaseDomain", "out")
    assert dom0.take_events() == [(b"@introduceDomain", b"in"), (b"@releaseDomain", b"out")]
    assert dom0.ok(wire.XS_IS_DOMAIN_INTRODUCED, "5") == b"F\0"
    dom0.ok(wire.XS_INTRODUCE, "5", "1234", "7")
    assert dom0.take_events() == [(b"@introduceDomain", b"in")]
    assert dom0.ok(wire.XS_IS_DOMAIN_INTRODUCED, "5") == b"T\0"
    dom0.ok(wire.XS_RELEASE, "5")
    assert dom0.take_events() == [(b"@releaseDomain", b"out")]
    assert dom0.ok(wire.XS_IS_DOMAIN_INTRODUCED, "5") == b"F\0"
    assert dom0.ok(wire.XS_IS_DOMAIN_INTRODUCED, "0") == b"T\0"


def test_domain_request_errors(dom0, guest_factory):
    guest = guest_factory(3)
    assert dom0.error(wire.XS_INTRODUCE, "5", "1") == "EINVAL"
    assert dom0.error(wire.XS_INTRODUCE, "5", "1", "0") == "EINVAL"
    assert dom0.error(wire.XS_RELEASE, "0") == "EINVAL"
    assert dom0.error(wire.XS_RELEASE, "42") == "ENOENT"
    assert dom0.error(wire.XS_RESUME, "42") == "ENOENT"
    dom0.ok(wire.XS_RESUME, "3")
    for msg_type, args in ((wire.XS_INTRODUCE, ("6", "1", "2")), (wire.XS_RELEASE, ("3",)),
                           (wire.XS_RESUME, ("3",)), (wire.XS_IS_DOMAIN_INTRODUCED, ("3",)),
                           (wire.XS_SET_TARGET, ("3", "3")), (wire.XS_CONTROL, ("print", "x"))):
        assert guest.error(msg_type, *args) == "EACCES"


def test_special_watch_permissions(dom0, guest_factory, engine):
    guest = guest_factory(3)
    guest.ok(wire.XS_WATCH, "@releaseDomain", "r")
    assert guest.take_events() == [(b"@releaseDomain", b"r")]  # the initial one always fires
    engine.introduce_domain(9, port=1)
    engine.release_domain(9)
    assert guest.take_events() == []
    dom0.ok(wire.XS_SET_PERMS, "@releaseDomain", "n0", "r3")
    engine.introduce_domain(9, port=1)
    engine.release_domain(9)
    assert guest.take_events() == [(b"@releaseDomain", b"r")]
    assert guest.error(wire.XS_SET_PERMS, "@releaseDomain", "r3") == "EACCES"
    assert dom0.error(wire.XS_SET_PERMS, "@other", "r3") == "EINVAL"


def test_release_ends_the_domain_connection(dom0, guest_factory, engine):
    guest = guest_factory(3)
    guest.ok(wire.XS_WATCH, "/x", "t")
    engine.release_domain(3)
    assert guest.conn_id not in engine.connections
    dom0.write("/x", "1")  # no event for the dead connection, no crash
    # Its nodes survive for the toolstack to clean up.
    assert dom0.ls("/local/domain") == [b"3"]


def test_reintroduce_resets_connection_state(guest_factory, engine):
    guest = guest_factory(3)
    guest.ok(wire.XS_WATCH, "/x", "t")
    assert engine.introduce_domain(3, port=1) == guest.conn_id
    assert engine.connections[guest.conn_id].watches == []


def test_shutdown_notification(dom0, guest_factory, engine):
    guest_factory(3)
    dom0.ok(wire.XS_WATCH, "@releaseDomain", "out")
    dom0.take_events()
    engine.mark_domain_shutdown(3)
    assert dom0.take_events() == [(b"@releaseDomain", b"out")]
    dom0.ok(wire.XS_RESUME, "3")


def test_control(dom0, guest_factory, engine):
    assert dom0.ok(wire.XS_CONTROL, "print", "hello") == b"OK\0"
    assert dom0.ok(wire.XS_CONTROL, "log", "on") == b"OK\0"
    assert dom0.ok(wire.XS_CONTROL, "log", "off") == b"OK\0"
    assert dom0.error(wire.XS_CONTROL, "log", "maybe") == "EINVAL"
    assert b"nodes" in dom0.ok(wire.XS_CONTROL, "quota")
    dom0.ok(wire.XS_CONTROL, "quota", "set", "nodes", "50")
    assert engine.quotas.nodes == 50
    assert dom0.error(wire.XS_CONTROL, "quota", "set", "nodes", "0") == "EINVAL"
    assert dom0.error(wire.XS_CONTROL, "quota", "set", "bogus", "5") == "EINVAL"
    guest_factory(3)
    assert b"Domain 3:" in dom0.ok(wire.XS_CONTROL, "quota", "3")
    assert dom0.error(wire.XS_CONTROL, "quota", "77") == "ENOENT"
    assert dom0.error(wire.XS_CONTROL, "no-such-command") == "EINVAL"
    assert dom0.error(wire.XS_CONTROL) == "EINVAL"
    assert b"print" in dom0.ok(wire.XS_CONTROL, "help")
    assert dom0.ok(wire.XS_CONTROL, "check") == b"OK\0"
    engine.store.nodes["/orphan/child"] = engine.store.get("/tool")
    assert dom0.error(wire.XS_CONTROL, "check") == "EIO"


def test_wire_introduce_uses_transport_hook(dom0, engine):
    calls = []

    def hook(domid, gfn, port):
        calls.append((domid, gfn, port))
        engine.introduce_domain(domid, gfn, port)

    engine.introduce_hook = hook
    dom0.ok(wire.XS_INTRODUCE, "12", "0x99", "3")
    assert calls == [(12, 0, 3)]  # atoi: "0x99" reads as 0
    assert dom0.ok(wire.XS_IS_DOMAIN_INTRODUCED, "12") == b"T\0"

"""WATCH / UNWATCH / WATCH_EVENT / RESET_WATCHES."""

from abi.io import xs_wire as wire

from .xenstored_kit import Client, message, parse_messages


def test_initial_event_follows_the_ok_reply(engine):
    conn = engine.open_connection()
    engine.feed(conn, message(wire.XS_WATCH, b"/x\0tok\0", req_id=7))
    replies = parse_messages(engine.data_to_send(conn))
    assert replies == [(wire.XS_WATCH, 7, 0, b"OK\0"),
                       (wire.XS_WATCH_EVENT, 0, 0, b"/x\0tok\0")]


def test_events_for_node_and_descendants_only(dom0, engine):
    watcher = Client(engine)
    watcher.ok(wire.XS_WATCH, "/a/b", "t")
    watcher.take_events()
    dom0.write("/a/b", "1")
    dom0.write("/a/b/c/d", "1")
    dom0.write("/a/bc", "1")  # a sibling with a common prefix
    dom0.write("/a", "1")
    assert watcher.take_events() == [(b"/a/b", b"t"), (b"/a/b/c/d", b"t")]


def test_rm_fires_for_root_and_exact_watchers_of_descendants(dom0, engine):
    dom0.write("/r/x/y", "")
    above, below, other = Client(engine), Client(engine), Client(engine)
    above.ok(wire.XS_WATCH, "/r", "above")
    below.ok(wire.XS_WATCH, "/r/x/y", "below")
    other.ok(wire.XS_WATCH, "/r/x/y/z", "deeper")
    for c in (above, below, other):
        c.take_events()
    dom0.ok(wire.XS_RM, "/r/x")
    assert above.take_events() == [(b"/r/x", b"above")]
    assert below.take_events() == [(b"/r/x/y", b"below")]
    assert other.take_events() == []


def test_relative_watch_reports_relative_paths(dom0, guest_factory):
    guest = guest_factory(4)
    guest.ok(wire.XS_WATCH, "device", "dev")
    assert guest.take_events() == [(b"device", b"dev")]
    dom0.write("/local/domain/4/device/vbd/51712", "x")
    assert guest.take_events() == [(b"device/vbd/51712", b"dev")]
    guest.ok(wire.XS_UNWATCH, "device", "dev")
    dom0.write("/local/domain/4/device/vbd/2", "x")
    assert guest.take_events() == []


def test_watchers_need_read_access(dom0, guest_factory):
    guest = guest_factory(4)
    guest.ok(wire.XS_WATCH, "/private", "p")
    guest.take_events()
    dom0.write("/private/secret", "s")
    dom0.write("/private", "")
    assert guest.take_events() == []
    dom0.ok(wire.XS_SET_PERMS, "/private", "n0", "r4")
    assert guest.take_events() == [(b"/private", b"p")]


def test_permission_loss_is_still_reported(dom0, guest_factory):
    guest = guest_factory(4)
    dom0.write("/shared", "")
    dom0.ok(wire.XS_SET_PERMS, "/shared", "r4")
    guest.ok(wire.XS_WATCH, "/shared", "s")
    guest.take_events()
    dom0.ok(wire.XS_SET_PERMS, "/shared", "n0")
    assert guest.take_events() == [(b"/shared", b"s")]


def test_duplicates_and_unwatch_errors(dom0):
    dom0.ok(wire.XS_WATCH, "/a", "t")
    assert dom0.error(wire.XS_WATCH, "/a", "t") == "EEXIST"
    dom0.ok(wire.XS_WATCH, "/a", "t2")
    assert dom0.error(wire.XS_UNWATCH, "/a", "nope") == "ENOENT"
    dom0.ok(wire.XS_UNWATCH, "/a", "t")
    assert dom0.error(wire.XS_WATCH, "/a") == "EINVAL"
    assert dom0.error(wire.XS_WATCH, "/bad//path", "t") == "EINVAL"


def test_pending_identical_events_are_merged(dom0, engine):
    watcher = Client(engine)
    watcher.ok(wire.XS_WATCH, "/m", "t")
    watcher.take_events()
    for value in ("1", "2", "3"):
        dom0.write("/m", value)
    assert watcher.take_events() == [(b"/m", b"t")]


def test_reset_watches(dom0, engine):
    watcher = Client(engine)
    watcher.ok(wire.XS_WATCH, "/a", "t")
    tx = int(watcher.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    watcher.ok(wire.XS_RESET_WATCHES, "")
    watcher.take_events()
    dom0.write("/a", "1")
    assert watcher.take_events() == []
    assert watcher.error(wire.XS_READ, "/a", tx=tx) == "ENOENT"


def test_watch_quota_is_e2big(guest_factory, engine):
    guest = guest_factory(4)
    engine.quotas.watches = 3
    for i in range(3):
        guest.ok(wire.XS_WATCH, f"w{i}", "t")
    assert guest.error(wire.XS_WATCH, "w9", "t") == "E2BIG"


def test_closed_connection_watches_are_gone(dom0, engine):
    watcher = Client(engine)
    watcher.ok(wire.XS_WATCH, "/a", "t")
    engine.close_connection(watcher.conn_id)
    dom0.write("/a", "1")  # must not try to reach the closed connection
    assert engine.data_to_send(watcher.conn_id) == b""

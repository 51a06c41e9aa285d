"""TRANSACTION_START / TRANSACTION_END with per-node conflict detection."""

from abi.io import xs_wire as wire


def start(client):
    return int(client.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))


def end(client, tx, commit=True):
    m_type, payload = client.raw(wire.XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
    return payload.rstrip(b"\0").decode()


def test_changes_are_private_until_commit(dom0, engine):
    from .xenstored_kit import Client
    other = Client(engine)
    tx = start(dom0)
    dom0.write("/t/a", "1", tx=tx)
    assert dom0.read("/t/a", tx=tx) == b"1"
    assert other.error(wire.XS_READ, "/t/a") == "ENOENT"
    assert end(dom0, tx) == "OK"
    assert other.read("/t/a") == b"1"


def test_abort_discards(dom0):
    tx = start(dom0)
    dom0.write("/t/a", "1", tx=tx)
    dom0.ok(wire.XS_RM, "/tool", tx=tx)
    assert end(dom0, tx, commit=False) == "OK"
    assert dom0.error(wire.XS_READ, "/t/a") == "ENOENT"
    assert dom0.ls("/") == [b"tool"]


def test_conflict_on_read_node_gives_eagain(dom0, engine):
    from .xenstored_kit import Client
    other = Client(engine)
    dom0.write("/c", "0")
    tx = start(dom0)
    assert dom0.read("/c", tx=tx) == b"0"
    dom0.write("/d", "1", tx=tx)
    other.write("/c", "changed")
    assert end(dom0, tx) == "EAGAIN"
    assert dom0.error(wire.XS_READ, "/d") == "ENOENT"
    # The transaction is gone after a failed commit.
    assert dom0.error(wire.XS_READ, "/c", tx=tx) == "ENOENT"


def test_unrelated_changes_do_not_conflict(dom0, engine):
    from .xenstored_kit import Client
    other = Client(engine)
    dom0.write("/x/a", "0")
    dom0.write("/y/b", "0")
    tx = start(dom0)
    dom0.write("/x/a", "1", tx=tx)
    other.write("/y/b", "2")
    assert end(dom0, tx) == "OK"
    assert dom0.read("/x/a") == b"1"


def test_concurrent_creation_in_same_directory_conflicts(dom0, engine):
    from .xenstored_kit import Client
    other = Client(engine)
    dom0.write("/dir/seed", "")
    tx = start(dom0)
    dom0.write("/dir/mine", "", tx=tx)
    other.write("/dir/theirs", "")
    assert end(dom0, tx) == "EAGAIN"


def test_rm_inside_transaction(dom0):
    dom0.write("/r/a/b", "1")
    tx = start(dom0)
    dom0.ok(wire.XS_RM, "/r/a", tx=tx)
    assert dom0.ls("/r", tx=tx) == []
    assert dom0.ls("/r") == [b"a"]
    assert end(dom0, tx) == "OK"
    assert dom0.ls("/r") == []
    assert dom0.error(wire.XS_READ, "/r/a/b") == "ENOENT"


def test_errors(dom0):
    assert dom0.error(wire.XS_READ, "/tool", tx=42) == "ENOENT"
    tx = start(dom0)
    assert dom0.error(wire.XS_TRANSACTION_START, "", tx=tx) == "EBUSY"
    assert dom0.error(wire.XS_TRANSACTION_END, "X", tx=tx) == "EINVAL"
    assert dom0.error(wire.XS_TRANSACTION_END, "T") == "ENOENT"
    assert end(dom0, tx) == "OK"
    assert start(dom0) != tx


def test_watch_events_fire_on_commit_only(dom0, engine):
    from .xenstored_kit import Client
    watcher = Client(engine)
    watcher.ok(wire.XS_WATCH, "/w", "tok")
    assert watcher.take_events() == [(b"/w", b"tok")]
    tx = start(dom0)
    dom0.write("/w/a", "1", tx=tx)
    assert watcher.take_events() == []
    assert end(dom0, tx) == "OK"
    assert watcher.take_events() == [(b"/w/a", b"tok")]
    tx = start(dom0)
    dom0.write("/w/b", "1", tx=tx)
    end(dom0, tx, commit=False)
    assert watcher.take_events() == []


def test_transaction_quota_for_guests(dom0, guest_factory, engine):
    guest = guest_factory(3)
    engine.quotas.transactions = 2
    start(guest), start(guest)
    assert guest.error(wire.XS_TRANSACTION_START, "") == "ENOSPC"
    for _ in range(5):
        start(dom0)  # dom0 is not limited


def test_transaction_node_quota(guest_factory, engine):
    guest = guest_factory(3)
    engine.quotas.transaction_nodes = 5
    tx = start(guest)
    errors = [guest.raw(wire.XS_WRITE, f"n{i}\0".encode(), tx)[1] for i in range(6)]
    assert b"ENOSPC\0" in errors

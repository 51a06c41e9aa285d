"""Per-domain quotas, answered with cxenstored's errors."""

from abi.io import xs_wire as wire

from .xenstored_kit import message, parse_messages


def test_node_quota_enospc(dom0, guest_factory, engine):
    guest = guest_factory(3)
    engine.quotas.nodes = 5
    dom0.write("/local/domain/3/a", "")  # dom0-created nodes inherit owner 3 too
    for i in range(3):
        guest.write(f"n{i}", "")
    assert guest.error(wire.XS_WRITE, "n3", value=b"") == "ENOSPC"
    assert guest.error(wire.XS_MKDIR, "deep/er") == "ENOSPC"
    guest.ok(wire.XS_RM, "n0")
    guest.write("n3", "")
    dom0.write("/local/domain/3/dom0-is-exempt", "")


def test_node_size_quota(dom0, guest_factory):
    guest = guest_factory(3)
    assert guest.error(wire.XS_WRITE, "big", value=b"x" * 2048) == "ENOSPC"
    guest.write("fits", b"x" * 1900)
    dom0.write("/local/domain/3/dom0-big", b"x" * 4000)


def test_permission_count_quota(guest_factory):
    guest = guest_factory(3)
    guest.write("p", "")
    guest.ok(wire.XS_SET_PERMS, "p", "n3", "r1", "r2", "r4", "r5")
    assert guest.error(wire.XS_SET_PERMS, "p", "n3", "r1", "r2", "r4", "r5", "r6") == "ENOSPC"


def test_outstanding_replies_stop_reading(guest_factory, engine):
    guest = guest_factory(3)
    engine.quotas.outstanding = 2
    burst = b"".join(message(wire.XS_GET_DOMAIN_PATH, b"3\0", req_id=i) for i in range(5))
    engine.feed(guest.conn_id, burst)
    conn = engine.connections[guest.conn_id]
    assert conn.outstanding == 2 and len(conn.inbuf) > 0
    replies = []
    while len(replies) < 5:
        replies += parse_messages(engine.data_to_send(guest.conn_id))
    assert [r[1] for r in replies] == [0, 1, 2, 3, 4]


def test_reply_larger_than_payload_max_is_e2big(dom0):
    for i in range(80):
        dom0.write(f"/wide/{'c' * 60}{i:03d}", "")
    assert dom0.error(wire.XS_DIRECTORY, "/wide") == "E2BIG"


def test_guest_that_never_reads_loses_events_not_memory(dom0, guest_factory, engine):
    guest = guest_factory(3)
    engine.quotas.memory = 2000
    guest.ok(wire.XS_WATCH, "/local/domain/3", "t")
    for i in range(200):
        dom0.write(f"/local/domain/3/k{i}", "")
    assert engine.connections[guest.conn_id].out_bytes <= 2000
    assert 0 < len(guest.take_events()) < 200


def test_over_quota_domain_may_still_commit_without_creating(dom0, guest_factory, engine):
    guest = guest_factory(3)
    engine.quotas.nodes = 2
    for i in range(4):
        dom0.write(f"/local/domain/3/k{i}", "")  # dom0 is exempt; owner is 3
    tx = int(guest.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    guest.write("k0", "changed", tx=tx)
    assert guest.ok(wire.XS_TRANSACTION_END, "T", tx=tx) == b"OK\0"
    tx = int(guest.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    assert guest.error(wire.XS_WRITE, "new", value=b"", tx=tx) == "ENOSPC"

"""The in-process toolstack client."""

import pytest

from dom0.xenstored import LocalClient, XenStore, XsError


def test_toolstack_flow():
    engine = XenStore()
    xs = LocalClient(engine)
    xs.mkdir("/local/domain/5")
    xs.set_perms("/local/domain/5", ["n5", "r0"])
    xs.write("/local/domain/5/name", "guest")
    assert xs.read("/local/domain/5/name") == b"guest"
    assert xs.read("/missing") is None
    assert xs.directory("/local/domain/5") == ["name"]
    assert xs.get_perms("/local/domain/5/name") == ["n5", "r0"]
    xs.watch("/local/domain/5", "tok")
    xs.rm("/local/domain/5/name")
    assert xs.take_events() == [(b"/local/domain/5", b"tok"), (b"/local/domain/5/name", b"tok")]
    with pytest.raises(XsError) as error:
        xs.write("bad//path", "x")
    assert error.value.name == "EINVAL"


def test_transactions_commit_and_abort():
    engine = XenStore()
    xs = LocalClient(engine)
    with xs.transaction() as tx:
        tx.write("/a", "1")
        assert xs.read("/a") is None
    assert xs.read("/a") == b"1"
    with pytest.raises(RuntimeError):
        with xs.transaction() as tx:
            tx.write("/b", "1")
            raise RuntimeError
    assert xs.read("/b") is None
    other = LocalClient(engine)
    with pytest.raises(XsError) as error:
        with xs.transaction() as tx:
            tx.read("/a")
            other.write("/a", "2")
    assert error.value.name == "EAGAIN"

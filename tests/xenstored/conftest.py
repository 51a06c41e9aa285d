import pytest

from dom0.xenstored import XenStore

from .xenstored_kit import Client


@pytest.fixture
def engine():
    return XenStore()


@pytest.fixture
def dom0(engine):
    return Client(engine, 0)


@pytest.fixture
def guest_factory(engine, dom0):
    """Introduce a guest domain the way the toolstack does: create its home
    directory owned by the domain, then introduce it."""
    from abi.io import xs_wire as wire

    def make(domid: int) -> Client:
        home = f"/local/domain/{domid}"
        dom0.ok(wire.XS_MKDIR, home)
        dom0.ok(wire.XS_SET_PERMS, home, f"n{domid}", "r0")
        conn_id = engine.introduce_domain(domid, gfn=0, port=1)
        return Client(engine, domid, conn_id=conn_id)

    return make


@pytest.fixture(autouse=True)
def no_engine_crashes(caplog):
    """The engine turns internal exceptions into EIO replies and logs them;
    a test that triggers one has found a bug."""
    yield
    crashes = [r for r in caplog.records
               if r.name.startswith("dom0.xenstored") and r.levelname in ("ERROR", "CRITICAL")]
    assert not crashes, crashes[0].getMessage()

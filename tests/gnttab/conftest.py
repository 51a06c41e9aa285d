from tests.evtchn.conftest import a, b, consistent, dom0  # noqa: F401 (fixtures shared with tests/evtchn)

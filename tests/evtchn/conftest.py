from __future__ import annotations

import pytest

from tests.evtchn.evtchn_kit import Guest


@pytest.fixture
def a(hv):
    return Guest(hv, vcpus=2)


@pytest.fixture
def b(hv):
    return Guest(hv, vcpus=2)


@pytest.fixture
def dom0(hv):
    return Guest(hv, privileged=True)


@pytest.fixture(autouse=True)
def consistent(hv):
    """Every test leaves event channels and grants consistent."""
    yield
    from pvhyp import event_channel, grant_table
    from pvhyp.mm.checker import check_invariants
    assert event_channel.check_consistency(hv) == []
    assert grant_table.check_consistency(hv) == []
    assert check_invariants(hv) == []      # the PV MMU's own books balance with the grants' holds too

"""Fixtures for the PV vCPU tests: a fake clock and x86-style guests (see pvvcpu_kit)."""
from __future__ import annotations

import pytest

from pvhyp.time import FakeClock
from tests.pvvcpu.pvvcpu_kit import Guest


@pytest.fixture
def clock(hv):
    fake = FakeClock(start_ns=1_000_000_000)
    hv.time.use_clock(fake)
    return fake


@pytest.fixture
def guest(hv, clock):
    d = hv.create_domain(max_vcpus=2, max_pages=64)
    return Guest(hv, d)


@pytest.fixture
def other_guest(hv, clock):
    d = hv.create_domain(max_vcpus=1, max_pages=64)
    return Guest(hv, d)

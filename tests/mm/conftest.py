import pytest

from pvhyp.mm.checker import check_invariants

from .mm_kit import Guest, make_hv


@pytest.fixture
def hv():
    """A small hypervisor; every test must leave the MMU's invariants intact."""
    hv = make_hv()
    yield hv
    assert check_invariants(hv) == []
    hv.close()


@pytest.fixture
def guest(hv):
    # pfns 8-39 are mapped writable, 40-55 read-only (room for new page tables).
    return Guest(hv, 64, read_only_pfns=range(40, 56))


@pytest.fixture
def other(hv, guest):
    return Guest(hv, 32)


class FlushCounter:
    def __init__(self):
        self.flushes = 0

    def flush_tlb(self):
        self.flushes += 1


@pytest.fixture
def flushes(guest):
    arch = FlushCounter()
    guest.vcpu.arch = arch
    return arch

"""Builder fixtures: a hypervisor with dom0 as an in-process privileged process domain,
a XenCtrl over its channel, and the XTF kernels."""
from __future__ import annotations

import pytest

from tests.builder.builder_kit import xtf_kernels


@pytest.fixture
def machine():
    """(hv, dom0, XenCtrl) on a 256 MiB machine."""
    from dom0.xc import XenCtrl
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.host import build_hypervisor
    hv = build_hypervisor(256, cpu=False)
    dom0 = create_process_domain(hv, nr_pages=256, privileged=True, domid=0)
    xc = XenCtrl(InProcessChannel(hv, dom0))
    yield hv, dom0, xc
    hv.close()


@pytest.fixture
def xtf_example() -> bytes:
    kernels = [k for k in xtf_kernels() if k.name == "test-pv64-example"]
    if not kernels:
        pytest.skip("XTF kernels not found (../shared/xtf or $PVHYP_XTF_DIR)")
    return kernels[0].read_bytes()

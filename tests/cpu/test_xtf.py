"""Real XTF PV64 kernels, built by dom0's builder, run on the engine under the real hypervisor.

The kernels write their result to the PV console ring and spin until it is
consumed, so a small consumer stands in for xenconsoled.
"""
from __future__ import annotations

import struct
import threading
import time

import pytest

from tests.conftest import xtf_dir

XTF = xtf_dir()
RING_OUT, RING_OUT_CONS = 1024, 3080
RING_OUT_SIZE = 2048

# (kernel, command line, vCPUs)
PASSING = [
    ("test-pv64-example", "", 1),
    ("test-pv64-selftest", "", 1),
    ("test-pv64-cpuid", "", 1),
    ("test-pv64-cpuid-faulting", "", 1),
    ("test-pv64-pv-iopl", "hypercall", 1),
    ("test-pv64-pv-iopl", "vmassist", 1),
    ("test-pv64-xsa-296", "", 2),
    ("test-pv64-xsa-265", "", 1),
    ("test-pv64-xsa-193", "", 1),
    ("test-pv64-xsa-182", "", 1),
    ("test-pv64-xsa-7", "", 1),
    ("test-pv64-xsa-333", "", 1),
]


def run_xtf(name: str, cmdline: str = "", vcpus: int = 1, timeout: float = 20.0) -> str:
    from dom0.builder import build_pv_domain
    from dom0.xc import XenCtrl
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.host import build_hypervisor

    hv = build_hypervisor(256, cpu=True)
    try:
        dom0 = create_process_domain(hv, nr_pages=256, privileged=True, domid=0)
        xc = XenCtrl(InProcessChannel(hv, dom0))
        domid = xc.domain_create(max_vcpus=vcpus)
        result = build_pv_domain(xc, domid, (XTF / name).read_bytes(), 128, cmdline=cmdline)
        # Until the builder's setvcpucontext path fills it: the M2P slot of the boot L4.
        hv.mmu.fill_ro_mpt(result.l4_mfn)
        d = hv.domains[domid]
        ring = result.p2m[result.layout.console_pfn] << 12
        output = bytearray()

        def consume() -> None:
            while not d.is_shut_down:
                cons, prod = struct.unpack_from("<II", hv.memory.buf, ring + RING_OUT_CONS)
                while cons != prod:
                    output.append(hv.memory.buf[ring + RING_OUT + cons % RING_OUT_SIZE])
                    cons = (cons + 1) & 0xFFFF_FFFF
                struct.pack_into("<I", hv.memory.buf, ring + RING_OUT_CONS, cons)
                time.sleep(0.001)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        xc.domain_unpause(domid)
        hv.cpu.start_domain(d)
        deadline = time.monotonic() + timeout
        while not d.is_shut_down and time.monotonic() < deadline:
            time.sleep(0.01)
        consumer.join(1.0)
        hv.cpu.stop_domain(d)
        text = output.decode(errors="replace") or d.console.read(0, 1 << 16)[0].decode(errors="replace")
        assert d.is_shut_down, f"{name} did not finish: {text}"
        return text
    finally:
        hv.close()


@pytest.mark.skipif(XTF is None, reason="XTF kernels not found")
@pytest.mark.parametrize("name, cmdline, vcpus", PASSING)
def test_xtf_kernel_succeeds(name, cmdline, vcpus):
    text = run_xtf(name, cmdline, vcpus)
    assert "Test result: SUCCESS" in text, text

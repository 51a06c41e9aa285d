"""The builder in a dom0 of its own: a separate process on the socket channel, mapping the
guest's frames from the memfd, builds an XTF kernel; the hypervisor here checks the result."""
from __future__ import annotations

import json

from tests.dom0.conftest import run_python

DOM0_SCRIPT = """
import json, sys
from pvguest.hypercall_channel import SocketChannel
from dom0.builder import build_pv_domain
from dom0.xc import XenCtrl
xc = XenCtrl(SocketChannel.from_env())
domid = xc.domain_create()
result = build_pv_domain(xc, domid, open(sys.argv[1], "rb").read(), 32, cmdline="from a process")
print(json.dumps({"domid": domid, "l4": result.l4_mfn, "p2m0": result.p2m[0],
                  "start_info_pfn": result.layout.start_info_pfn, "hypercall_pfn": result.layout.hypercall_pfn}))
"""


def test_dom0_process_builds_a_kernel_over_the_socket(tmp_path, xtf_example):
    from pvhyp.channel import create_process_domain
    from pvhyp.channel_server import ChannelServer
    from pvhyp.domctl import hypercall_page_bytes
    from pvhyp.host import build_hypervisor

    hv = build_hypervisor(96, cpu=False)
    server = ChannelServer(hv)
    try:
        dom0 = create_process_domain(hv, nr_pages=256, privileged=True, domid=0)
        kernel = tmp_path / "kernel"
        kernel.write_bytes(xtf_example)
        code = DOM0_SCRIPT.replace("sys.argv[1]", repr(str(kernel)))
        out = json.loads(run_python(server.attach(dom0), code, timeout=60).strip().splitlines()[-1])
        d = hv.domains[out["domid"]]
        assert d.tot_pages == 32 * 256 and d.p2m[0] == out["p2m0"]
        v = d.vcpus[0]
        assert v.online and v.guest_table == out["l4"]
        start_info = hv.memory.read(d.p2m[out["start_info_pfn"]] << 12, 32)
        assert start_info.rstrip(b"\0") == b"xen-3.0-x86_64"
        assert bytes(hv.memory.frame(d.p2m[out["hypercall_pfn"]])) == hypercall_page_bytes()
        assert hv.frames.pinned[out["l4"]]
    finally:
        server.close()
        hv.close()

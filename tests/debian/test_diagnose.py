"""pvhyp.diagnose on a real hypervisor: the guest's oops comes first, then its last lines, the vCPUs and hypercalls."""
from __future__ import annotations

from pvhyp import diagnose

CONSOLE = b"""[    8.36] Spectre V2 : Mitigation: Retpolines\r
[    8.37] x86/fpu: x87 FPU will use FXSAVE\r
[    8.37] BUG: unable to handle page fault for address: 000000000000e033\r
[    8.37] #PF: supervisor read access in kernel mode\r
[    8.37] RIP: e030:init_stack+0x3d0a/0x4000\r
[    8.37] Call Trace:\r
[    8.37]  ? apply_paravirt+0x126/0x230\r
[    8.37] Kernel panic - not syncing: Attempted to kill the idle task!\r
"""


def test_first_oops_starts_at_the_bug_line():
    lines = diagnose.guest_lines(CONSOLE)
    oops = diagnose.first_oops(lines)
    assert oops[0].endswith("BUG: unable to handle page fault for address: 000000000000e033")
    assert any("RIP: e030:init_stack" in line for line in oops)
    assert diagnose.first_oops(diagnose.guest_lines(b"all fine\n")) == []


def test_report_on_a_domain_that_never_ran():
    from pvhyp.host import build_hypervisor
    hv = build_hypervisor(16, cpu=False)
    try:
        domain = hv.create_domain(max_vcpus=2, max_pages=64)
        hv.trace.remember("hypercall", domain.domid, 0, nr=17, name="xen_version", args=[0, 0, 0], result=0x4_0011)
        text = diagnose.report(hv, domain, CONSOLE)
        assert text.index("guest oops (first):") < text.index("guest console, last")
        assert "vcpu0: never ran" in text and "vcpu1: never ran" in text
        assert "counters: hypercall 0, exception 0, emulated 0, ptwr 0" in text
        assert "xen_version(0x0, 0x0, 0x0) = 262161" in text
    finally:
        hv.memory.close()

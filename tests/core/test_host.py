"""The composition root: one place builds a hypervisor, with every subsystem, in a fixed order."""
from __future__ import annotations

import re

from pvhyp.host import build_hypervisor
from pvhyp.hypervisor import Hypervisor
from tests.core.source_kit import ROOT, python_files


def test_every_declared_subsystem_is_attached():
    hv = build_hypervisor(16, cpu=False)
    try:
        missing = [name for name in Hypervisor.__annotations__ if not hasattr(hv, name)]
        assert missing == []
        assert hv.cpu is None and hv.xen_l4_slots == {}
        assert hv.hypercalls.name(17) == "xen_version"
    finally:
        hv.close()


def test_the_cpu_engine_is_attached_on_request():
    hv = build_hypervisor(64, cpu=True)
    try:
        assert hv.cpu is not None
        assert sorted(hv.xen_l4_slots) and min(hv.xen_l4_slots) >= 256
    finally:
        hv.close()


def test_only_the_root_installs_the_handlers():
    # `hypercalls.install(table)`, the package's installer; a table's own slot is set with register(nr, name, fn)
    call = re.compile(r"(?<![\w.])hypercalls\.install\(")
    installers = [str(p.relative_to(ROOT)) for package in ("pvhyp", "dom0", "tests")
                  for p in python_files(package)
                  if call.search(p.read_text()) and p.name != "test_host.py"]
    assert installers == ["pvhyp/host.py"]

"""`pvhyp up` with its XenAPI on a free loopback port, and a VM store holding an XTF template."""
from __future__ import annotations

import os

import pytest

from tests.conftest import xtf_dir
from tests.toolstack.conftest import start_host

XTF_TEMPLATE = """# xapi: template
# xapi: description XTF's example test kernel
name = "xtf-example"
kernel = "{kernel}"
memory = 16
on_poweroff = "destroy"
"""


class XapiHost:
    def __init__(self, host, vm_dir: str):
        self.host = host
        self.vm_dir = vm_dir
        with open(os.path.join(host.run_dir, "xapi.url")) as f:
            self.url = f.read().strip()
        with open(os.path.join(host.run_dir, "xapi-credentials")) as f:
            self.user, self.password = f.read().strip().split(":", 1)

    def session(self):
        import XenAPI
        session = XenAPI.Session(self.url)
        session.xenapi.login_with_password(self.user, self.password, "1.0", "pvhyp tests")
        return session


@pytest.fixture(scope="package")
def xapi_host(tmp_path_factory):
    kernels = xtf_dir()
    if kernels is None or not (kernels / "test-pv64-example").exists():
        pytest.skip("XTF kernels not found (../shared/xtf or $PVHYP_XTF_DIR)")
    vm_dir = str(tmp_path_factory.mktemp("vms"))
    with open(os.path.join(vm_dir, "xtf-example.cfg"), "w") as f:
        f.write(XTF_TEMPLATE.format(kernel=kernels / "test-pv64-example"))
    run_dir = str(tmp_path_factory.mktemp("up"))
    host = start_host(run_dir, extra=("--api", "127.0.0.1:0", "--vm-dir", vm_dir))
    yield XapiHost(host, vm_dir)
    host.pvhyp("down", check=False)

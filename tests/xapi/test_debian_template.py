"""The Debian rootfs template through the XenAPI: VM.clone (copy-on-write), VM.start, its login prompt,
VM.clean_shutdown (the guest powers itself off: Halted), VM.destroy. Slow: a Debian boot."""
from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.toolstack.conftest import start_host

XenAPI = pytest.importorskip("XenAPI")
ROOTFS = os.path.expanduser("~/.cache/pvhyp/debian-rootfs")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed"),
              pytest.mark.skipif(not os.path.exists(os.path.join(ROOTFS, "debian-12.img")),
                                 reason="no Debian rootfs (pvhyp image debian --rootfs)")]


def test_clone_start_and_clean_shutdown_the_debian_template(tmp_path):
    host = start_host(str(tmp_path / "run"), memory_mb=768, extra=("--api", "127.0.0.1:0"))
    try:
        url = open(os.path.join(host.run_dir, "xapi.url")).read().strip()
        user, password = open(os.path.join(host.run_dir, "xapi-credentials")).read().strip().split(":", 1)
        session = XenAPI.Session(url)
        session.xenapi.login_with_password(user, password)
        x = session.xenapi
        [template] = x.VM.get_by_name_label("debian-disk")          # a new store's template
        assert x.VM.get_is_a_template(template)
        vm = x.VM.clone(template, "xapi-debian")
        x.VM.start(vm, False, False)
        started = time.monotonic()
        host.wait_for(lambda: re.search(r"^xapi-debian login: ", host.console_log("xapi-debian"), re.M),
                      timeout=600, what="the clone's login prompt")
        print(f"\nxapi-debian: login prompt {time.monotonic() - started:.0f} s after VM.start")
        x.VM.clean_shutdown(vm)                                     # answers once Halted
        assert x.VM.get_power_state(vm) == "Halted"
        [vbd] = x.VM.get_VBDs(vm)
        overlay = x.VDI.get_location(x.VBD.get_VDI(vbd))
        assert overlay.endswith("xapi-debian-xvda.qcow2")
        x.VM.destroy(vm)
        os.unlink(overlay)
        session.xenapi.session.logout()
    finally:
        host.pvhyp("down", check=False)

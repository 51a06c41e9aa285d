"""VM.clone and VM.copy of a template with a real disk image (qemu-img): a copy-on-write overlay or a
full copy in the VM store, seen as the clone's VBD and VDI; the template's image never changes."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import time

import pytest

from dom0.xapi.model import Api, Pending
from dom0.xapi.session import Sessions
from dom0.xapi.store import VmStore
from tests.xapi.test_table import NoDomains

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")


def finish(result):
    deadline = time.monotonic() + 60
    while isinstance(result, Pending):
        done, value = result.poll(time.monotonic())
        if done:
            if isinstance(value, Exception):
                raise value
            return value
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return result


def test_clone_and_copy(tmp_path):
    images, vms = tmp_path / "images", tmp_path / "vms"
    images.mkdir()
    vms.mkdir()
    image = images / "base.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "8M"], check=True)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    (vms / "base.cfg").write_text(f'# xapi: template\n# xapi: description the base\nname = "base"\n'
                                  f'kernel = "/k"\nmemory = 16\ndisk = [ "format=raw, vdev=xvda, access=rw, '
                                  f'target={image}" ]\n')
    (tmp_path / "creds").write_text("root:pw\n")
    (tmp_path / "creds").chmod(0o600)
    api = Api(NoDomains(), VmStore(str(vms)), Sessions(str(tmp_path / "creds")), lambda: "http://x:1")
    session = api.call("session.login_with_password", ["root", "pw"])
    template = api.call("VM.get_by_name_label", [session, "base"])[0]

    cow = finish(api.call("VM.clone", [session, template, "cow"]))
    full = finish(api.call("VM.copy", [session, template, "full", "OpaqueRef:NULL"]))
    for vm, fmt in ((cow, "qcow2"), (full, "raw")):
        record = api.call("VM.get_record", [session, vm])
        assert not record["is_a_template"] and record["name_description"] == "the base"
        [vbd] = record["VBDs"]
        vdi = api.call("VBD.get_VDI", [session, vbd])
        location = api.call("VDI.get_location", [session, vdi])
        assert location == str(vms / f"{record['name_label']}-xvda.{fmt}")
        assert api.call("VDI.get_VBDs", [session, vdi]) == [vbd]
        assert api.call("SR.get_name_label", [session, api.call("VDI.get_SR", [session, vdi])]) == "Local storage"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    with pytest.raises(Exception) as failure:       # the name is taken
        finish(api.call("VM.clone", [session, template, "cow"]))
    assert "exists" in str(failure.value)
    api.call("VM.set_name_label", [session, cow, "cow2"])
    assert api.call("VM.get_name_label", [session, cow]) == "cow2" and (vms / "cow.cfg").exists()
    api.call("VM.destroy", [session, full])
    assert not (vms / "full.cfg").exists() and (vms / "full-xvda.raw").exists()    # XAPI keeps VDIs
    orphan = next(ref for ref, vdi in api.call("VDI.get_all_records", [session]).items()
                  if vdi["location"].endswith("full-xvda.raw"))
    api.call("VDI.destroy", [session, orphan])
    assert not (vms / "full-xvda.raw").exists()

"""`pvhyp clone`: copy-on-write and full clones with real qemu-img images; the template never changes."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import pytest

from dom0.images import clone
from dom0.toolstack.config import parse_config

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="qemu-utils is not installed")


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def qemu_io(image, command: str) -> str:
    return subprocess.run(["qemu-io", "-c", command, str(image)], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def template(tmp_path):
    image = tmp_path / "template.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "16M"], check=True)
    qemu_io(image, "write -P 0x5a 0 1M")
    shared = tmp_path / "shared.iso"
    shared.write_bytes(b"\0" * 4096)
    cfg = tmp_path / "template.cfg"
    cfg.write_text(f"""# the template
name = "template"
kernel = "/boot/vmlinuz"
memory = 256
extra = "console=hvc0 root=/dev/xvda ro"
disk = [ 'format=raw, vdev=xvda, access=rw, target={image}', '{shared},raw,xvdb,r' ]
vif = [ 'mac=00:16:3e:00:00:01, bridge=br0' ]
""")
    return cfg, image


def test_copy_on_write_clone_has_its_own_identity_and_an_overlay(template, tmp_path):
    cfg, image = template
    before = sha256(image)
    made = clone.clone(str(cfg), "batagor", cwd=str(tmp_path))
    new = parse_config(open(made["config"]).read())
    old = parse_config(cfg.read_text())
    assert new.name == "batagor" and new.uuid and new.uuid != old.uuid
    assert re.match(r"^00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}$", new.vifs[0].mac) and new.vifs[0].bridge == "br0"
    assert new.vifs[0].mac != old.vifs[0].mac
    assert new.cmdline == old.cmdline and new.memory == 256
    root, shared = new.disks
    assert root.format == "qcow2" and root.target == made["disks"][0] and root.vdev == "xvda"
    assert shared == old.disks[1]                                   # read-only disks stay shared
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", root.target],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["backing-filename"] == str(image) and info["backing-filename-format"] == "raw"
    # the clone reads the template's bytes, writes only its overlay
    assert "pattern verification" not in qemu_io(root.target, "read -P 0x5a 0 1M")
    qemu_io(root.target, "write -P 0xa5 0 64k")
    assert "pattern verification" not in qemu_io(root.target, "read -P 0xa5 0 64k")
    assert sha256(image) == before


def test_full_clone_is_an_independent_copy(template, tmp_path):
    cfg, image = template
    before = sha256(image)
    made = clone.clone(str(cfg), "mieayam", full=True, cwd=str(tmp_path))
    disk = parse_config(open(made["config"]).read()).disks[0]
    assert disk.format == "raw" and disk.target.endswith("mieayam-xvda.raw")
    assert sha256(disk.target) == before
    qemu_io(disk.target, "write -P 0x11 0 64k")
    assert sha256(image) == before and sha256(disk.target) != before


def test_two_clones_differ_in_every_identity(template, tmp_path):
    cfg, _ = template
    a = clone.clone(str(cfg), "batagor", cwd=str(tmp_path))
    b = clone.clone(str(cfg), "ketoprak", cwd=str(tmp_path))
    assert a["uuid"] != b["uuid"] and a["macs"] != b["macs"] and a["disks"] != b["disks"]


@pytest.mark.parametrize("name", ["", "bad name", "a_b", "-x", "x" * 64, "../etc"])
def test_a_name_that_is_no_host_name_is_refused(template, tmp_path, name):
    cfg, _ = template
    with pytest.raises(clone.CloneError, match="use letters, digits"):
        clone.clone(str(cfg), name, cwd=str(tmp_path))


def test_refusals_leave_nothing_behind(template, tmp_path):
    cfg, image = template
    clone.clone(str(cfg), "batagor", cwd=str(tmp_path))
    with pytest.raises(clone.CloneError, match="exists"):
        clone.clone(str(cfg), "batagor", cwd=str(tmp_path))
    missing = tmp_path / "missing.cfg"
    missing.write_text(cfg.read_text().replace(str(image), str(tmp_path / "gone.raw")))
    with pytest.raises(clone.CloneError, match="is not a file"):
        clone.clone(str(missing), "ketoprak", cwd=str(tmp_path))
    broken = tmp_path / "broken.cfg"
    broken.write_text("name = \n")
    with pytest.raises(clone.CloneError, match="broken.cfg:1"):
        clone.clone(str(broken), "ketoprak", cwd=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if "ketoprak" in p.name) == []


def test_the_command_prints_the_clone_and_errors_exit_2(template, tmp_path):
    cfg, _ = template
    ok = subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                         "clone", str(cfg), "batagor"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0 and "config: " + str(tmp_path / "batagor.cfg") in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                          "clone", str(cfg), "bad name"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr

"""xl.cfg parsing: xl's syntax, its disk and vif specs, and line-numbered one-line errors."""
from __future__ import annotations

import pytest

from dom0.toolstack.config import ConfigError, parse_config, parse_disk, parse_vif

GOOD = '''# a comment
name = "web1"
memory = 512          # MiB
maxmem = 1024
vcpus = 2
kernel = "/boot/vmlinuz"
ramdisk = '/boot/initrd.img';
root = "/dev/xvda1 ro"
extra = "console=hvc0"
disk = [ 'phy:/dev/vg/web1,xvda,w',
         'format=qcow2, vdev=xvdb, access=ro, target=/images/data,1.qcow2',
       ]
vif = [ "mac=00:16:3e:01:02:03,bridge=xenbr0", 'ip=10.0.0.2' ]
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "preserve"
'''


def test_a_full_config():
    cfg = parse_config(GOOD, "web1.cfg")
    assert (cfg.name, cfg.memory, cfg.maxmem, cfg.vcpus, cfg.maxvcpus) == ("web1", 512, 1024, 2, 2)
    assert (cfg.kernel, cfg.ramdisk) == ("/boot/vmlinuz", "/boot/initrd.img")
    assert cfg.cmdline == "root=/dev/xvda1 ro console=hvc0"
    assert [(d.vdev, d.target, d.format, d.access, d.backendtype) for d in cfg.disks] == [
        ("xvda", "/dev/vg/web1", "raw", "w", "phy"), ("xvdb", "/images/data,1.qcow2", "qcow2", "ro", "")]
    assert cfg.disks[1].readonly and not cfg.disks[0].readonly
    assert [(v.mac, v.bridge, v.ip) for v in cfg.vifs] == [("00:16:3e:01:02:03", "xenbr0", ""), ("", "", "10.0.0.2")]
    assert (cfg.on_poweroff, cfg.on_reboot, cfg.on_crash) == ("destroy", "restart", "preserve")
    assert cfg.python_guest is None and cfg.warnings == []


def test_defaults_cmdline_and_python_guests():
    cfg = parse_config('name="g"\nkernel="python:pvguest.examples.hello:main"\ncmdline="a b"\nextra="ignored"\n')
    assert (cfg.memory, cfg.maxmem, cfg.vcpus, cfg.on_reboot) == (128, 128, 1, "restart")
    assert cfg.cmdline == "a b"
    assert cfg.python_guest == "pvguest.examples.hello:main"


def test_unknown_settings_are_warnings_as_xl_ignores_them():
    cfg = parse_config('name="g"\nkernel="k"\nbuilder="generic"\nfrobnicate=3\n', "g.cfg")
    assert cfg.warnings == ["g.cfg:3: builder: not used by pvhyp", "g.cfg:4: frobnicate: unknown setting, ignored"]


@pytest.mark.parametrize("text,message", [
    ('kernel="k"\n', "g.cfg: no name"),
    ('name="g"\n', "g.cfg: no kernel"),
    ('name="g"\nkernel="k"\nmemory="lots"\n', "g.cfg:3: memory: expected an integer, got 'lots'"),
    ('name="g"\nkernel="k"\nmemory=0\n', "g.cfg:3: memory: must be at least 1"),
    ('name="g"\nkernel="k"\nmemory=64\nmaxmem=32\n', "g.cfg:4: maxmem: maxmem 32 is below memory 64"),
    ('name="g"\nkernel="k"\nvcpus=0\n', "g.cfg:3: vcpus: must be between 1 and 128"),
    ('name="g h"\nkernel="k"\n', "g.cfg:1: name: invalid domain name 'g h'"),
    ('name="Domain-0"\nkernel="k"\n', "g.cfg:1: name: invalid domain name"),
    ('name = "g" kernel="k"\n', "g.cfg:1: expected end of line, found 'kernel'"),
    ('name "g"\n', "g.cfg:1: expected '=', found 'g'"),
    ('name="g"\nkernel="k"\ndisk=["xvda,w",\n  "phy:/a"]\n', "g.cfg:3: disk: disk 0 'xvda,w': disk spec has no target"),
    ('name="g"\nkernel="k"\ndisk=["/a,xvda,w", "/b,xvda,r"]\n', "g.cfg:3: disk: two disks share a vdev"),
    ('name="g"\nkernel="k"\ndisk=["/a,xvda,rwx"]\n', "g.cfg:3: disk: disk 0 '/a,xvda,rwx': cannot place"),
    ('name="g"\nkernel="k"\ndisk=["/a,xvda,w,format=vmdk"]\n', "unknown disk format 'vmdk'"),
    ('name="g"\nkernel="k"\nvif=["mac=00:16:3e:zz:00:01"]\n', "g.cfg:3: vif: vif 0 'mac=00:16:3e:zz:00:01': invalid mac"),
    ('name="g"\nkernel="k"\nvif=["colour=blue"]\n', "unknown vif parameter 'colour'"),
    ('name="g"\nkernel="k"\non_crash="explode"\n', "g.cfg:3: on_crash: invalid action 'explode'"),
    ('name="g"\nkernel="k"\ntype="hvm"\n', "g.cfg:3: type: only type = \"pv\" is supported"),
    ('name="g"\nkernel="k"\nuuid="nope"\n', "g.cfg:3: uuid: invalid uuid"),
    ('name="g"\nkernel="k"\nextra="' + "x" * 1100 + '"\n', "g.cfg:3: extra: command line exceeds 1023 bytes"),
    ('name="g\n', "g.cfg:1: unexpected character '\"'"),
    ('name="g"\nkernel="k"\ndisk=[\n', "g.cfg:4: expected a string or number in the list, found end of file"),
    ('name="a\\qb"\n', "g.cfg:1: unknown escape \\q"),
])
def test_errors_are_one_line_with_the_line_number(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "g.cfg")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_disk_spec_forms():
    assert parse_disk("/dev/sdb,raw,xvdb,ro").access == "ro"
    d = parse_disk("vdev=hdc,devtype=cdrom,access=ro,format=raw,target=")
    assert (d.vdev, d.devtype, d.target) == ("hdc", "cdrom", "")
    assert parse_disk("file:/img,xvda1,w").target == "/img"


def test_vif_spec_rejects_multicast_macs():
    with pytest.raises(ValueError, match="multicast"):
        parse_vif("mac=01:16:3e:00:00:01")

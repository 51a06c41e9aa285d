"""`pvhyp clone CFG NEWNAME [--full]`: a new guest from a template guest, as `xe vm-clone` / `vm-copy`.

The template is an xl config and its disks. A clone gets:
- for every writable disk, its own image: by default a qcow2 overlay whose
  backing file is the template's image (`qemu-img create -f qcow2 -b T -F fmt`:
  copy-on-write, made in a moment, the template's bytes shared); with --full a
  complete copy (`qemu-img convert`, same format, zeros left sparse). Read-only
  disks (an installer, shared data) stay shared as they are.
- its own name, UUID and MAC addresses (Xen's 00:16:3e range, as libxl draws
  them), written into a new config beside the old settings.
- its hostname and a fresh machine-id at first boot, inside the guest: the
  toolstack writes the guest's name into xenstore (vm-data/hostname) and the
  Debian template's pvhyp-identity unit applies it (dom0/images/rootfs.py).

The template is never written: the overlay is the only file a clone's backend
opens for writing, and QEMU opens a backing file read-only. (Booting the
template itself afterwards would change what its copy-on-write clones read,
as with any backing file: keep templates for cloning, as XenServer does.)
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import uuid as uuidlib

from dom0.toolstack.config import ConfigError, parse_assignments, parse_config, parse_disk, parse_vif

# RFC 1123 host name label; also a safe file name and xl domain name.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
XEN_OUI = (0x00, 0x16, 0x3E)


class CloneError(Exception):
    """One line for the user: what is wrong with the template or the request."""


def random_mac(rng: random.Random | None = None) -> str:
    """A MAC in Xen's OUI 00:16:3e, the next byte below 0x80 as libxl draws them."""
    rng = rng or random.SystemRandom()
    tail = (rng.randrange(0x80), rng.randrange(0x100), rng.randrange(0x100))
    return ":".join(f"{b:02x}" for b in XEN_OUI + tail)


def image_format(path: str) -> str:
    """The format qemu-img finds in `path` (raw, qcow2, ...)."""
    info = _qemu_img(["info", "--output=json", path])
    return json.loads(info)["format"]


def clone(cfg_path: str, new_name: str, full: bool = False, out: str | None = None,
          cwd: str | None = None) -> dict:
    """Make the clone; returns {"config": path, "disks": [paths], "uuid", "macs"}."""
    if not _NAME.match(new_name):
        raise CloneError(f"clone name {new_name!r}: use letters, digits and '-' (it becomes the host name)")
    cwd = cwd or os.getcwd()
    try:
        text = pathlib.Path(cfg_path).read_text()
    except OSError as e:
        raise CloneError(f"{cfg_path}: {e.strerror}") from None
    try:
        parse_config(text, cfg_path)                    # the template must be a config pvhyp would boot
        settings = parse_assignments(text, cfg_path)
    except ConfigError as e:
        raise CloneError(str(e)) from None
    out_path = pathlib.Path(out) if out else pathlib.Path(cwd) / f"{new_name}.cfg"
    if not out_path.is_absolute():
        out_path = pathlib.Path(cwd) / out_path
    if out_path.exists():
        raise CloneError(f"{out_path} exists: a clone never overwrites a config")
    images: list[str] = []
    values = {key: value for key, (value, _) in settings.items()}
    try:
        disks = []
        for spec_text in _as_list(values.get("disk")):
            spec = parse_disk(str(spec_text))
            if spec.readonly or not spec.target:
                disks.append(str(spec_text))
                continue
            template = _resolve(spec.target, cwd)
            fmt = image_format(template)
            suffix = fmt if full else "qcow2"
            image = out_path.parent / f"{new_name}-{spec.vdev}.{suffix}"
            if image.exists():
                raise CloneError(f"{image} exists: a clone never overwrites a disk")
            if full:
                _qemu_img(["convert", "-O", fmt, template, str(image)])
            else:
                _qemu_img(["create", "-q", "-f", "qcow2", "-b", template, "-F", fmt, str(image)])
            images.append(str(image))
            disks.append(f"format={suffix}, vdev={spec.vdev}, access=rw, target={image}")
        if "disk" in values:
            values["disk"] = disks
        macs = []
        vifs = []
        for spec_text in _as_list(values.get("vif")):
            parse_vif(str(spec_text))
            mac = random_mac()
            macs.append(mac)
            fields = [f for f in (p.strip() for p in str(spec_text).split(",")) if f and not f.startswith("mac=")]
            vifs.append(", ".join([f"mac={mac}"] + fields))
        if "vif" in values:
            values["vif"] = vifs
        new_uuid = str(uuidlib.uuid4())
        values["name"] = new_name
        values["uuid"] = new_uuid
        how = "full copy" if full else "copy-on-write clone"
        body = [f"# {how} of {os.path.abspath(cfg_path)} (pvhyp clone)"]
        body += [f"{key} = {xl_value(value)}" for key, value in values.items()]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = out_path.with_name(f".{out_path.name}.partial")
        partial.write_text("\n".join(body) + "\n")
        parse_config(partial.read_text(), str(out_path))          # what we wrote must boot
        os.replace(partial, out_path)
    except (ValueError, ConfigError) as e:
        _remove(images)
        raise CloneError(str(e)) from None
    except BaseException:
        _remove(images)
        raise
    return {"config": str(out_path), "disks": images, "uuid": new_uuid, "macs": macs}


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _resolve(target: str, cwd: str) -> str:
    """A disk target as the toolstack opens it: ~ expanded, relative to the command's directory."""
    path = os.path.expanduser(target)
    if not os.path.isabs(path):
        path = os.path.join(cwd, path)
    path = os.path.normpath(path)
    if not os.path.isfile(path):
        raise CloneError(f"disk image {path} is not a file")
    return path


def xl_value(value) -> str:
    if isinstance(value, list):
        return "[ " + ", ".join(xl_value(v) for v in value) + " ]"
    if isinstance(value, (int, float)):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _qemu_img(args: list[str]) -> str:
    if shutil.which("qemu-img") is None:
        raise CloneError("qemu-img not found (Debian's qemu-utils)")
    try:
        return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines()
        raise CloneError(f"qemu-img {args[0]}: {lines[-1] if lines else e.returncode}") from None


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass

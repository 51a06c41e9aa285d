"""Disks of a domain, as libxl adds them: the vbd entries, then the block backend serves them.

`xl create`'s disk lines, `pvhyp block-attach DOM SPEC` (the same xl disk
syntax), `block-detach DOM VDEV` and `block-list DOM` all come here.  The
backend keys are libxl's for a qdisk: params = "FORMAT:PATH", mode r|w,
dev (the vdev name), type, device-type, removable, bootable; the frontend
gets virtual-device (the vdev's number, xvda = 51712) and device-type.
A relative target is taken relative to the directory the user gave the
command in (`cwd`), as xl would.
"""
from __future__ import annotations

import os

from dom0.block.vdev import vdev_number
from dom0.toolstack.config import DiskSpec, parse_disk
from dom0.xenbus import DeviceError, XenbusBackends
from dom0.xenbus import entries as device_entries

KIND = "vbd"
QEMU_SERVED = ("qcow2", "qcow", "vhd", "qed")


class DiskError(Exception):
    """One line for the user: which disk and what is wrong."""


def resolve_target(spec: DiskSpec, cwd: str | None) -> str:
    target = os.path.expanduser(spec.target)
    if not os.path.isabs(target):
        target = os.path.join(cwd or os.getcwd(), target)
    return os.path.normpath(target)


def disk_keys(spec: DiskSpec, target: str) -> tuple[int, dict[str, str], dict[str, str]]:
    """(devid, backend keys, frontend keys) of one disk; DiskError for what no backend serves."""
    try:
        devid = vdev_number(spec.vdev)
    except ValueError as e:
        raise DiskError(str(e)) from None
    if spec.format == "empty" or (spec.devtype == "cdrom" and not spec.target):
        raise DiskError(f"disk {spec.vdev}: empty drives are not supported")
    if spec.format not in ("raw", *QEMU_SERVED):
        raise DiskError(f"disk {spec.vdev}: format {spec.format!r} is not supported")
    backend = {"params": f"{spec.format}:{target}", "mode": "r" if spec.readonly else "w",
               "dev": spec.vdev, "type": "qdisk" if spec.format in QEMU_SERVED else "phy",
               "device-type": spec.devtype, "removable": "0", "bootable": "1",
               "discard-enable": "0" if "no-discard" in spec.extra else "1"}
    frontend = {"virtual-device": str(devid), "device-type": spec.devtype}
    return devid, backend, frontend


def attach(xs, backends: XenbusBackends, domid: int, spec: DiskSpec, cwd: str | None = None) -> int:
    """Write the entries of one disk and plug its backend; its devid.  DiskError if it cannot be."""
    target = resolve_target(spec, cwd)
    devid, backend, frontend = disk_keys(spec, target)
    if devid in device_entries.device_ids(xs, KIND, domid) or (KIND, domid, devid) in backends.devices:
        raise DiskError(f"disk {spec.vdev}: the domain already has that vdev")
    device_entries.write_device(xs, KIND, domid, devid, backend, frontend)
    try:
        backends.plug(KIND, domid, devid)
    except DeviceError as e:
        device_entries.remove_device(xs, KIND, domid, devid)
        raise DiskError(f"disk {spec.vdev}: {e}") from None
    return devid


def attach_all(xs, backends: XenbusBackends, domid: int, specs: list[DiskSpec],
               cwd: str | None = None) -> None:
    for spec in specs:
        attach(xs, backends, domid, spec, cwd)


def attach_spec(xs, backends: XenbusBackends, domid: int, text: str, cwd: str | None = None) -> int:
    """block-attach: SPEC in xl's disk syntax."""
    try:
        spec = parse_disk(text)
    except ValueError as e:
        raise DiskError(f"disk spec {text!r}: {e}") from None
    return attach(xs, backends, domid, spec, cwd)


def detach(backends: XenbusBackends, domid: int, vdev: str, force: bool = False) -> int:
    """block-detach: ask the frontend to let go (or pull the disk at once with `force`)."""
    try:
        devid = vdev_number(vdev)
    except ValueError as e:
        raise DiskError(str(e)) from None
    done = backends.force_remove(KIND, domid, devid) if force else backends.unplug(KIND, domid, devid)
    if not done:
        raise DiskError(f"domain {domid} has no disk {vdev}")
    return devid


def listing(backends: XenbusBackends, domid: int) -> list[dict]:
    """block-list: one row per disk: vdev, devid, backend state, target, mode, error."""
    rows = []
    for device in backends.devices_of(domid, KIND):
        describe = getattr(device.kind, "describe", None)
        row = describe(device) if describe is not None else {"devid": device.devid}
        row.update(state=backends.state_of(device), error=device.error or "")
        rows.append(row)
    return rows

"""The block backend in a real dom0, driven by Python blkfronts in real guest processes.

Raw and qcow2 (through qemu-nbd) images, the xl disk syntax, read-only
disks, hostile ring entries, hot plug with block-attach/-detach/-list, and
host I/O errors: every check reads what the guest saw (its report in
xenstore) and what reached the image on the host.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from abi.io import blkif as B

PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(3 * 4096))
needs_qemu = pytest.mark.skipif(shutil.which("qemu-nbd") is None, reason="qemu-utils is not installed")


def raw_image(bhost, name: str, size: int = 32 << 20) -> str:
    path = os.path.join(bhost.run_dir, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def roundtrip_ok(report: dict) -> None:
    assert "error" not in report, report.get("error")
    assert report["write"] == report["read"] == report["flush"] == 0
    assert report["read_matches"] and report["indirect_matches"]
    assert report["indirect"] == [0, B.BLKIF_OP_READ]     # the response names the indirect op
    assert report["batch"] == [0] and report["closed"]


@pytest.mark.parametrize("order", [0, 3])
def test_raw_disk_positional_syntax(bhost, order):
    path = raw_image(bhost, f"raw{order}.img")
    name = f"rawguest{order}"
    bhost.pvhyp("create", bhost.config(name, "python:pvguest.examples.blkcheck:roundtrip",
                                       disk=[f"{path},raw,xvda,w"], extra=f"order={order}"))
    report = bhost.report(name)
    roundtrip_ok(report)
    assert report["sectors"] == (32 << 20) // 512 and report["info"] == 0
    features = report["features"]
    for key in ("sector-size", "physical-sector-size", "feature-flush-cache", "feature-discard",
                "discard-granularity", "discard-alignment", "feature-persistent",
                "feature-max-indirect-segments", "max-ring-page-order"):
        assert key in features, key
    assert report["batch_size"] == {0: 32, 3: 256}[order]
    bhost.wait_gone(name)
    with open(path, "rb") as f:
        f.seek(8 * 512)
        assert f.read(len(PATTERN)) == PATTERN                 # the WRITE reached the file


@needs_qemu
def test_qcow2_overlay_keyword_syntax_leaves_the_template_alone(bhost):
    base = os.path.join(bhost.run_dir, "template.qcow2")
    overlay = os.path.join(bhost.run_dir, "clone.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "32M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay], check=True)
    with open(base, "rb") as f:
        before = f.read()
    bhost.pvhyp("create", bhost.config("qguest", "python:pvguest.examples.blkcheck:roundtrip",
                                       disk=[f"format=qcow2, vdev=xvda, access=rw, target={overlay}"],
                                       extra="write_tag=hello-qcow2"))
    report = bhost.report("qguest")
    roundtrip_ok(report)
    assert report["tag"] == report["tag_flush"] == 0
    bhost.wait_gone("qguest")
    assert not [p for p in os.listdir(os.path.join(bhost.run_dir, "block")) if p.endswith(".nbd")]
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -v 0 16", overlay],
                         capture_output=True, text=True, check=True).stdout
    assert "68 65 6c 6c 6f 2d 71 63 6f 77 32" in out       # "hello-qcow2"
    with open(base, "rb") as f:
        assert f.read() == before


def test_read_only_disk_refuses_writes(bhost):
    path = raw_image(bhost, "ro.img")
    bhost.pvhyp("create", bhost.config("roguest", "python:pvguest.examples.blkcheck:roundtrip",
                                       disk=[f"{path},raw,xvda,ro"]))
    report = bhost.report("roguest")
    assert report["info"] & B.VDISK_READONLY
    assert report["write"] == B.BLKIF_RSP_ERROR and report["read"] == 0 and report["flush"] == 0
    assert "feature-discard" not in report["features"]
    with open(path, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)


def test_hostile_frontend_gets_errors_and_is_disconnected_others_go_on(bhost):
    path = raw_image(bhost, "hostile.img")
    bhost.pvhyp("create", bhost.config("hostile", "python:pvguest.examples.blkcheck:hostile",
                                       disk=[f"{path},raw,xvda,w"], extra="order=2"))
    report = bhost.report("hostile")
    assert "error" not in report, report.get("error")
    eopnotsupp, error = B.BLKIF_RSP_EOPNOTSUPP, B.BLKIF_RSP_ERROR
    assert report == {**report, "unknown_op": eopnotsupp, "reserved_op": eopnotsupp, "no_segments": error,
                      "too_many_segments": error, "segment_past_page": error, "segment_backwards": error,
                      "past_the_disk": error, "sector_wraps": error, "bad_gref": error,
                      "ungranted_gref": error, "foreign_gref": error, "unconsumed_state": 4,
                      "discard_secure": eopnotsupp, "discard_past_end": error,
                      "indirect_bad_op": error, "indirect_too_many": error, "write_after": 0,
                      "read_after": [0, "ok"], "overflow": "closing"}
    assert "past our responses" in report["backend_error"]
    assert report["unconsumed_answered"] == 128         # order 2: the whole ring, answered
    # the backend lives: another guest's disk works, and dom0 logged no exception
    other = raw_image(bhost, "after-hostile.img")
    bhost.pvhyp("create", bhost.config("afterhostile", "python:pvguest.examples.blkcheck:roundtrip",
                                       disk=[f"{other},raw,xvda,w"]))
    roundtrip_ok(bhost.report("afterhostile"))
    log = bhost.dom0_log()
    assert "Traceback" not in log and "disconnecting the frontend" in log


def test_block_attach_list_detach_and_host_io_errors(bhost):
    path = raw_image(bhost, "hot.img")
    bhost.pvhyp("create", bhost.config("hot", "python:pvguest.examples.blkcheck:commands"))
    assert bhost.pvhyp("block-list", "hot").stdout.count("\n") == 1      # header only
    bhost.pvhyp_in(bhost.run_dir, "block-attach", "hot", f"{os.path.basename(path)},raw,xvdb,w")
    assert json.loads(bhost.command("hot", "attach", 51728)) == {"sectors": 65536, "info": 0}
    listing = bhost.pvhyp("block-list", "hot").stdout
    assert "xvdb" in listing and "Connected" in listing and path in listing
    assert json.loads(bhost.command("hot", "write", 4096, 0x77)) == 0
    assert json.loads(bhost.command("hot", "read", 4096)) == [0, 0x77]
    refused = bhost.pvhyp("block-attach", "hot", f"{path},raw,xvdb,w", check=False)
    assert refused.returncode == 2 and "already has that vdev" in refused.stderr
    # the image shrinks under the backend: reads past the new end are I/O errors, the disk lives on
    os.truncate(path, 1 << 20)
    assert json.loads(bhost.command("hot", "read", 4096)) == [B.BLKIF_RSP_ERROR, 0x77]
    assert json.loads(bhost.command("hot", "read", 0)) == [0, 0]
    assert json.loads(bhost.command("hot", "flush")) == 0
    bhost.pvhyp("block-detach", "hot", "xvdb")
    assert bhost.read(f"/local/domain/{bhost.domid('hot')}/data/detached") == "51728"
    assert "xvdb" not in bhost.pvhyp("block-list", "hot").stdout
    assert bhost.read(f"/local/domain/0/backend/vbd/{bhost.domid('hot')}/51728") is None
    missing = bhost.pvhyp("block-detach", "hot", "xvdc", check=False)
    assert missing.returncode == 2 and "has no disk xvdc" in missing.stderr
    nofile = bhost.pvhyp("block-attach", "hot", "/nonexistent.img,raw,xvdc,w", check=False)
    assert nofile.returncode == 2 and "cannot open /nonexistent.img" in nofile.stderr
    bhost.pvhyp("destroy", "hot")


def test_bad_disk_lines_fail_create_with_one_line(bhost):
    cfg = bhost.config("nodisk", "python:pvguest.examples.hello", disk=["/nonexistent.img,raw,xvda,w"])
    out = bhost.pvhyp("create", cfg, check=False)
    assert out.returncode == 2 and "cannot open /nonexistent.img" in out.stderr
    assert "nodisk" not in bhost.pvhyp("list").stdout


@pytest.mark.parametrize("order,reason", [("1", "ring page not mapped"), ("9", "ring-page-order")])
def test_a_bad_handshake_is_refused_with_a_reason(bhost, order, reason):
    path = raw_image(bhost, f"bad-handshake{order}.img")
    name = f"badshake{order}"
    bhost.pvhyp("create", bhost.config(name, "python:pvguest.examples.blkcheck:bad_handshake",
                                       disk=[f"{path},raw,xvda,w,no-discard"], extra=f"order={order}"))
    report = bhost.report(name)
    assert report["backend_state"] == "5" and reason in report["backend_error"], report

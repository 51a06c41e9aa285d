"""`pvhyp inspect DOM --VIEW` against a real `pvhyp up`: an XTF kernel (x86, its page tables
walked by the MMU), a Python guest with a connected disk (rings, grants, ports, watches).
Hostile arguments get one-line errors and exit status 2.

The CLI runs in this process (`cli`: its main(), against the real hypervisor and dom0
processes), since starting Python for each of some forty calls would cost most of the
test's time; a few calls run it as a user does, as a process of its own (`host.pvhyp`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest

from tests.toolstack.conftest import start_host

XTF_EXAMPLE = "/work/shared/xtf/test-pv64-example"
XTF_TEXT_VA = 0x100000          # XTF's image starts at 1 MiB, mapped by its boot page tables
GUEST = "python:tests.inspect.inspect_guest:main"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if not os.path.exists(XTF_EXAMPLE):
        pytest.skip(f"{XTF_EXAMPLE} (XTF) is not built")
    h = start_host(str(tmp_path_factory.mktemp("inspect")))
    try:
        h.pvhyp("create", h.config("xtf", XTF_EXAMPLE, memory=8, on_poweroff="preserve", on_crash="preserve"))
        disk = os.path.join(h.run_dir, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(4 << 20)
        h.pvhyp("create", h.config("disky", GUEST, disk=[f"{disk},raw,xvda,w"]))
        h.wait_for(lambda: "inspect: " in h.console_log("disky"), what="the disk guest's report")
        h.wait_for(lambda: "Test result" in h.pvhyp("dmesg").stdout, what="XTF's verdict")
        yield h
    finally:
        h.pvhyp("down", check=False)


def cli(host, *args: str, check: bool = True) -> SimpleNamespace:
    """`pvhyp ARGS` through the CLI's main() in this process: returncode, stdout, stderr."""
    from pvhyp.cli import main
    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("PVHYP_RUN_DIR")
    os.environ["PVHYP_RUN_DIR"] = host.run_dir
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        if saved is None:
            del os.environ["PVHYP_RUN_DIR"]
        else:
            os.environ["PVHYP_RUN_DIR"] = saved
    if check:
        assert code == 0, f"pvhyp {' '.join(args)}: {out.getvalue()}{err.getvalue()}"
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def view(host, dom: str, *args: str) -> dict:
    reply = json.loads(cli(host, "inspect", dom, *args, "--json").stdout)
    assert reply["name"] == dom or dom.isdigit()
    return reply["data"]


def report(host) -> dict:
    line = [ln for ln in host.console_log("disky").splitlines() if ln.startswith("inspect: ")][-1]
    got = json.loads(line[len("inspect: "):])
    assert got["write"] == got["read"] == got["flush"] == 0
    return got


def domid(host, name: str) -> int:
    return int(cli(host, "domid", name).stdout)


def test_pagetables_walks_four_levels_of_typed_frames(host):
    walk = view(host, "xtf", "--pagetables", hex(XTF_TEXT_VA))
    assert walk["cr3_frame"]["type"] == "L4" and walk["cr3_frame"]["pinned"]
    assert [row["level"] for row in walk["levels"]] == [4, 3, 2, 1]
    for row, below in zip(walk["levels"], ["L3", "L2", "L1", None]):
        assert "P" in row["flags"] and "RW" in row["flags"] or row["level"] == 1
        assert row["frame"]["owner"] == f"d{domid(host, 'xtf')}"
        if below:       # a table entry points at a frame the MMU validated as the next level
            assert row["frame"]["type"] == below and row["frame"]["type_count"] >= 1
    assert walk["levels"][-1]["index"] == (XTF_TEXT_VA >> 12) & 0x1FF
    assert walk["maps"]["maddr"] >> 12 == walk["levels"][-1]["frame"]["mfn"] and walk["stops"] is None
    text = host.pvhyp("inspect", "xtf", "--pagetables", hex(XTF_TEXT_VA)).stdout
    assert "L4[  0]" in text and "type L1" in text


def test_pagetables_of_an_unmapped_address_stops_where_the_cpu_would_fault(host):
    walk = view(host, "xtf", "--pagetables", "0")
    assert walk["maps"] is None and "not present" in walk["stops"]
    assert walk["levels"][-1]["flags"] == []


def test_frames_by_type(host):
    frames = view(host, "xtf", "--frames", "-v")
    counts = frames["counts"]
    assert counts["L4 pinned"] == 1 and counts["shared_info"] == 1 and counts["grant_table"] == 1
    assert counts.get("L1 unpinned", 0) + counts.get("L1 pinned", 0) >= 1
    assert sum(counts.values()) >= frames["tot_pages"]
    walk = view(host, "xtf", "--pagetables", hex(XTF_TEXT_VA))
    (first, last), = frames["lists"]["L4 pinned"]["ranges"]
    assert first == last == walk["cr3_mfn"]
    assert frames["dom0_rings"]["xenstore"] is not None
    assert "L4 pinned" in cli(host, "inspect", "xtf", "--frames").stdout


def test_evtchn_shows_the_disk_port_from_both_ends(host):
    guest = domid(host, "disky")
    port = report(host)["port"]
    ports = {p["port"]: p for p in view(host, "disky", "--evtchn")["ports"]}
    assert ports[port]["state"] == "interdomain" and ports[port]["peer"]["domid"] == 0
    dom0_port = ports[port]["peer"]["port"]
    dom0_ports = {p["port"]: p for p in view(host, "0", "--evtchn")["ports"]}
    assert dom0_ports[dom0_port]["peer"] == {"domid": guest, "port": port}
    assert any(p.get("virq") == "VIRQ_DOM_EXC" for p in dom0_ports.values())
    assert all(isinstance(p["pending"], bool) and isinstance(p["masked"], bool) for p in ports.values())


def test_grants_show_who_maps_what(host):
    guest = domid(host, "disky")
    grants = view(host, "disky", "--grants")
    mapped = [e for e in grants["entries"] if e["mapped_by"] == 0]
    assert mapped, grants                   # the ring page and the persistent data pages
    assert all("permit_access" in e["flags"] and e["domid"] == 0 and e["pin"] for e in mapped)
    dom0 = view(host, "0", "--grants")
    handles = [m for m in dom0["maptrack"] if m["domid"] == guest]
    assert {m["ref"] for m in handles} >= {e["ref"] for e in mapped}
    assert "mapped by d0" in cli(host, "inspect", "disky", "--grants").stdout


def test_rings_show_the_block_ring_indexes(host):
    served = report(host)["requests"]
    devices = {d["kind"]: d for d in view(host, "disky", "--rings")["devices"]}
    ring = devices["vbd"]["rings"]["blkif"]
    assert devices["vbd"]["state"] == "Connected"
    assert ring["req_prod"] == ring["req_cons"] == ring["rsp_prod"] == served
    assert ring["outstanding"] == 0 and ring["nr_ents"] == 32
    assert {"xenstore", "console"} <= set(devices)
    assert "outstanding 0" in cli(host, "inspect", "disky", "--rings").stdout


def test_xenstore_subtree_with_permissions_and_watches(host):
    guest = domid(host, "disky")
    home = f"/local/domain/{guest}"
    tree = view(host, "disky", "--xenstore", f"{home}/device")
    nodes = {n["path"]: n for n in tree["nodes"]}
    ring_ref = nodes[f"{home}/device/vbd/51712/ring-ref"]
    assert ring_ref["perms"][0] == f"n{guest}" and "r0" in ring_ref["perms"]
    watched = view(host, "disky", "--xenstore")      # the default: the domain's home
    assert any(w["path"] == f"{home}/control/shutdown" and w["domid"] == guest and w["via"] == "ring"
               for w in watched["watches"])
    assert f"{home}/name = \"disky\"" in cli(host, "inspect", "disky", "--xenstore").stdout


@pytest.mark.parametrize("args, message", [
    (("nosuch", "--frames"), "no domain named 'nosuch'"),
    (("77", "--evtchn"), "no domain with id 77"),
    (("xtf", "--pagetables", "zz"), "not a virtual address"),
    (("xtf", "--pagetables", "0x800000000000"), "not canonical"),
    (("xtf", "--pagetables", "0x" + "f" * 17), "not 64-bit"),
    (("xtf", "--pagetables", "0", "--vcpu", "3"), "no vCPU 3"),
    (("disky", "--pagetables", "0"), "process domain"),
    (("xtf", "--xenstore", "/" + "a" * 5000), "not a xenstore path"),
    (("xtf", "--xenstore", "relative"), "not a xenstore path"),
    (("xtf", "--xenstore", "/no/such/node"), "no xenstore node"),
    (("xtf",), "needs a view"),
    (("xtf", "--frames", "--memory", "64"), "describe a kernel file"),
])
def test_hostile_arguments_get_one_line_errors(host, args, message):
    proc = cli(host, "inspect", *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_a_hostile_argument_as_a_user_meets_it(host):
    proc = host.pvhyp("inspect", "xtf", "--pagetables", "0x800000000000", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("pvhyp: virtual address") and not proc.stdout


def test_the_toolstack_refuses_unknown_views_and_bad_types(host):
    from dom0.toolstack.api import call
    sock = os.path.join(host.run_dir, "pvhyp.sock")
    reply = call(sock, "inspect", dom="xtf", view="bogus")
    assert not reply["ok"] and "no view 'bogus'" in reply["error"]
    reply = call(sock, "inspect", dom="xtf", view="frames", vcpu="0")
    assert not reply["ok"] and "vcpu must be an integer" in reply["error"]
    reply = call(sock, "inspect", dom="xtf", view="pagetables", arg="0x100000", vcpu=-1)
    assert not reply["ok"] and "no vCPU -1" in reply["error"]


def test_help_names_each_view_and_its_xen_source(host):
    text = host.pvhyp("inspect", "--help").stdout
    for option, source in (("--pagetables", "xen/arch/x86/mm.c"), ("--frames", "mm.c"),
                           ("--evtchn", "xen/common/event_channel.c"), ("--grants", "xen/common/grant_table.c"),
                           ("--rings", "io/ring.h"), ("--xenstore", "xenstored_core.c")):
        assert option in text and source in text, option


def test_a_kernel_file_is_still_inspected(host):
    assert "Xen ELF notes" in cli(host, "inspect", XTF_EXAMPLE).stdout

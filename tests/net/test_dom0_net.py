"""netback through a real dom0 (`pvhyp up`): Python guests with vifs on bridges, hostile frontends,
hot plug, and the CLI. Every frame stays inside dom0's bridges."""
from __future__ import annotations

import json
import os

import pytest

from dom0.toolstack.api import call
from pvguest.xenbus import SocketTransport, Xenbus
from tests.toolstack.conftest import start_host


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = start_host(str(tmp_path_factory.mktemp("net-up")), memory_mb=192)
    yield h
    h.pvhyp("down", check=False)


def report(host, name: str, timeout: float = 60.0) -> dict:
    domid = int(host.pvhyp("domid", name).stdout)
    xs = Xenbus(SocketTransport(host.xenstored_socket))
    path = f"/local/domain/{domid}/data/report"

    def read():
        try:
            return xs.read(path)
        except Exception:
            return None
    try:
        raw = host.wait_for(read, timeout, f"{name}'s report")
    finally:
        xs.transport.close()
    result = json.loads(raw)
    assert "error" not in result, result["error"]
    return result


def create(host, name: str, entry: str, vifs: list[str], memory: int = 8) -> None:
    config = host.config(name, f"python:pvguest.examples.netcheck:{entry}", memory=memory, vif=vifs,
                         extra="linger=60")
    host.pvhyp("create", config)


def test_two_vifs_on_one_bridge_exchange_frames_of_every_size(host):
    create(host, "loop", "loop", ["bridge=lab", "bridge=lab, mac=00:16:3e:00:aa:01"])
    r = report(host, "loop")
    assert r["a_to_b"] == [True] * 5 and r["b_to_a"] == [True] * 2
    assert r["macs"][1] == "00:16:3e:00:aa:01" and r["macs"][0].startswith("00:16:3e:")
    assert r["tx_statuses"] == [0]
    listing = host.pvhyp("network-list", "loop").stdout
    assert "00:16:3e:00:aa:01" in listing and "lab" in listing
    host.pvhyp("destroy", "loop")


def test_hostile_frontend_is_answered_and_disconnected_alone(host):
    create(host, "bad", "hostile", ["bridge=h", "bridge=h", "bridge=h"])
    r = report(host, "bad")
    assert r["runt"] == [-1] and r["bad_gref"] == [-1] and r["too_many_slots"] == [-1]
    assert r["foreign_gref"] == [-1]
    assert r["good_after_drops"] == [True]
    assert "NETTXF_more_data past the producer index" in r["fatal_error"]
    assert r["good_after_fatal"] == [True]
    with open(os.path.join(host.run_dir, "dom0.log")) as f:
        assert "disconnecting the frontend: NETTXF_more_data past the producer index" in f.read()
    assert "bad" in host.pvhyp("list").stdout          # dom0 and the guest live on
    host.pvhyp("destroy", "bad")


def test_a_frontend_that_posts_no_buffers_loses_only_its_frames(host):
    create(host, "starve", "starve", ["bridge=s", "bridge=s", "bridge=s"])
    r = report(host, "starve", timeout=120)
    assert r["received_without_reposting"] <= 4
    assert r["sender_ok"] == [True]
    listing = call(os.path.join(host.run_dir, "pvhyp.sock"), "network-list", dom="starve")["vifs"]
    starving = listing[1]["counters"]
    assert starving["rx_dropped"] > 0
    host.pvhyp("destroy", "starve")


def test_network_attach_detach_on_a_running_guest(host):
    host.pvhyp("create", host.config("hp", "python:pvguest.examples.netcheck:hotplug", memory=8))
    host.pvhyp("network-attach", "hp", "bridge=hot", "mac=00:16:3e:00:bb:02")
    host.wait_for(lambda: "Connected" in host.pvhyp("network-list", "hp").stdout, 20, "the vif to connect")
    assert "00:16:3e:00:bb:02" in host.pvhyp("network-list", "hp").stdout
    host.pvhyp("network-detach", "hp", "00:16:3e:00:bb:02")
    host.wait_for(lambda: "00:16:3e:00:bb:02" not in host.pvhyp("network-list", "hp").stdout, 20, "the detach")
    bad = host.pvhyp("network-attach", "hp", "forward=tcp:nowhere:1:2", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "forward" in bad.stderr
    host.pvhyp("destroy", "hp")

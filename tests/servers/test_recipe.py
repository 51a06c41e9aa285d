"""The three-server scenario's pieces that need no guest (fast, default suite): the recipe in
examples/servers, the vm_data config key, the boot config with its forward, the protocol probes
and the demo command's refusals. The end-to-end run is tests/servers/test_servers.py (slow)."""
from __future__ import annotations

import socket
import threading

import pytest

from dom0.images import servers as template
from dom0.servers import probes, scenario
from dom0.toolstack.config import ConfigError, parse_config
from pvhyp.cli import main


def test_the_examples_are_three_servers_in_1_5_gib_each_with_its_own_role():
    total = 0
    for server in scenario.SERVERS:
        cfg = parse_config(server.example.read_text(), str(server.example))
        assert cfg.name == server.name and cfg.vm_data == {"role": server.role}
        assert cfg.memory <= 512 and not cfg.warnings
        assert len(cfg.vifs) == 1 and cfg.vifs[0].bridge == scenario.BRIDGE
        assert cfg.disks[0].target.endswith("servers-template/debian-12.img")
        total += cfg.memory
    assert total <= 1536
    assert sorted(template.ROLES) == sorted(s.role for s in scenario.SERVERS)


@pytest.mark.parametrize("spec, message", [
    ("role", "is not KEY=VALUE"), ("ro/le=x", "is not KEY=VALUE"), ("=x", "is not KEY=VALUE"),
    ("hostname=evil", "domain's name"), ("role=a\nb", "printable"), ("role=" + "x" * 1025, "at most 1024"),
])
def test_vm_data_refuses_what_xenstore_should_not_get(spec, message):
    text = f'name = "g"\nkernel = "/k"\nvm_data = [ {spec!r} ]\n'.replace("'", '"')
    with pytest.raises(ConfigError, match=message):
        parse_config(text.replace('"role=a\nb"', '"role=a\\x01b"'), "g.cfg")


def test_boot_config_adds_this_runs_forward_to_the_clones_vif(tmp_path):
    server = scenario.SERVERS[2]
    path = tmp_path / "ketoprak.cfg"
    path.write_text(server.example.read_text().replace("bridge=servers", "mac=00:16:3e:01:02:03, bridge=servers"))
    cfg = parse_config(scenario.boot_config(path, server, 18080), str(path))
    (vif,) = cfg.vifs
    assert vif.mac == "00:16:3e:01:02:03" and vif.extra["forward"] == "tcp:127.0.0.1:18080:80"
    assert cfg.vm_data == {"role": "web"}


def _one_reply_server(reply: bytes) -> int:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(4096)
            conn.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def test_probes_want_the_services_own_reply():
    request = probes.smb2_negotiate_request()
    assert request[4:8] == b"\xfeSMB" and int.from_bytes(request[:4], "big") == len(request) - 4
    negotiate_ok = request[:4] + probes.SMB2_HEADER.pack(b"\xfeSMB", 64, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, bytes(16))
    assert probes.answers("smb", _one_reply_server(negotiate_ok))
    assert not probes.answers("smb", _one_reply_server(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert probes.answers("web", _one_reply_server(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert not probes.answers("print", _one_reply_server(b""))       # passt accepting, no guest yet


@pytest.mark.parametrize("argv, message", [
    (["demo", "servers", "--smb-port", "7000", "--http-port", "7000"], "must differ"),
])
def test_demo_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_demo_refuses_bad_ports_and_timeouts():
    for argv in (["demo", "servers", "--ipp-port", "70000"], ["demo", "servers", "--timeout", "-1"],
                 ["demo", "elsewhere"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2



def test_clones_refuse_a_rebuilt_template(tmp_path):
    image = tmp_path / "template.img"
    image.write_bytes(b"first build")
    state = tmp_path / "clones"
    scenario.check_template(state, str(image))            # no clones yet: records this build
    (state / "batagor.cfg").write_text("")
    scenario.check_template(state, str(image))            # same build: fine
    image.unlink()
    image.write_bytes(b"second build, other inode")
    with pytest.raises(scenario.ScenarioError, match="rebuilt"):
        scenario.check_template(state, str(image))
    scenario.remove_clones(state)                         # what --fresh does
    scenario.check_template(state, str(image))

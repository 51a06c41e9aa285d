"""The acceptance path on a fresh machine: pvhyp up, create, list, console, xenstore-ls, destroy, down."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


def names(host) -> dict[str, list[str]]:
    rows = host.pvhyp("list").stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[1:] for row in rows}


def test_up_lists_dom0_and_xenstore_ls_sees_the_tree(host):
    listing = names(host)
    assert listing["Domain-0"][0] == "0"
    tree = host.xenstore("xenstore-ls", "-f")
    assert '/local/domain/0/name = "Domain-0"' in tree
    assert host.pvhyp("domid", "Domain-0").stdout.strip() == "0"
    assert "xen_major" in host.pvhyp("info").stdout


def test_create_console_and_destroy_a_python_guest(host):
    cfg = host.config("hello1", "python:pvguest.examples.hello", extra="quiet")
    out = host.pvhyp("create", cfg).stdout
    assert "Started domain hello1 (id=" in out
    domid = host.pvhyp("domid", "hello1").stdout.strip()
    assert host.pvhyp("domname", domid).stdout.strip() == "hello1"
    assert names(host)["hello1"][0] == domid
    host.wait_for(lambda: "Hello from hello1" in host.console_log("hello1"), what="the guest's greeting")
    # the guest wrote its home over its xenstore ring; Debian's tools see what libxl would write
    home = f"/local/domain/{domid}"
    host.wait_for(lambda: host.xenstore("xenstore-read", f"{home}/data/greeting").strip() == "hello")
    tree = host.xenstore("xenstore-ls", "-f", home)
    for entry in ('/name = "hello1"', "/console/tty = ", '/console/type = "xenconsoled"', "/store/port = ",
                  "/memory/target = \"4096\"", "/control/shutdown = "):
        assert entry in tree, entry
    vm = host.xenstore("xenstore-read", f"{home}/vm").strip()
    assert host.xenstore("xenstore-read", f"{vm}/name").strip() == "hello1"
    # console: what the user types reaches the guest, what it prints comes back (Ctrl-] detaches)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                             "console", "hello1"], env=host.env, cwd=host.root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    host.wait_for_console_client(proc)
    proc.stdin.write(b"ping\n")
    proc.stdin.flush()
    host.wait_for(lambda: "echo: ping" in host.console_log("hello1"), what="the echo")
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert b"echo: ping" in out
    assert f"(d{domid}) hello from hello1 via console_io" in host.pvhyp("dmesg").stdout
    hv_log = os.path.join(host.run_dir, "console", "hypervisor.log")
    host.wait_for(lambda: f"(d{domid}) hello from hello1 via console_io\n" in open(hv_log).read())
    assert "hello1" in host.pvhyp("uptime").stdout and "hello1" in host.pvhyp("vcpu-list").stdout
    host.pvhyp("pause", "hello1")
    assert names(host)["hello1"][3][2] == "p"
    host.pvhyp("unpause", "hello1")
    assert names(host)["hello1"][3][2] == "-"
    host.pvhyp("destroy", "hello1")
    assert "hello1" not in names(host)
    assert host.pvhyp("destroy", "hello1", check=False).stderr.strip() == "pvhyp: no domain named 'hello1'"
    assert f"/local/domain/{domid}" not in host.xenstore("xenstore-ls", "-f")


def test_shutdown_runs_the_configured_action(host):
    cfg = host.config("keeper", "python:pvguest.examples.hello", on_poweroff="preserve")
    host.pvhyp("create", cfg)
    host.wait_for(lambda: "Hello from keeper" in host.console_log("keeper"))
    host.pvhyp("shutdown", "keeper")
    host.wait_for(lambda: names(host)["keeper"][3][3] == "s", what="state s")
    host.pvhyp("destroy", "keeper")
    for name in ("goner", "goner2"):
        host.pvhyp("create", host.config(name, "python:pvguest.examples.hello"))
        host.wait_for(lambda name=name: f"Hello from {name}" in host.console_log(name))
    assert set(names(host)) >= {"goner", "goner2"}
    assert list(host.pvhyp("list", "goner2").stdout.splitlines()[1].split())[0] == "goner2"
    host.pvhyp("shutdown", "-a", "-w")          # every guest, waiting until they are gone
    assert set(names(host)) == {"Domain-0"}
    assert "goner: poweroff requested, bye" in host.console_log("goner")
    assert host.pvhyp("shutdown", check=False).returncode == 2


def test_create_dash_c_attaches_the_console(host):
    cfg = host.config("attached", "python:pvguest.examples.hello")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                             "create", "-c", cfg], env=host.env, cwd=host.root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    host.wait_for(lambda: "Hello from attached" in host.console_log("attached"))
    host.wait_for_console_client(proc)
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=10)
    assert b"Started domain attached" in out
    host.pvhyp("destroy", "attached")


def test_user_errors_are_one_line(host):
    bad = os.path.join(host.run_dir, "bad.cfg")
    with open(bad, "w") as f:
        f.write('name = "bad"\nmemory = "lots"\nkernel = "k"\n')
    err = host.pvhyp("create", bad, check=False)
    assert err.returncode == 2 and err.stderr == f"pvhyp: {bad}:2: memory: expected an integer, got 'lots'\n"
    missing = host.config("nokernel", "/nonexistent/vmlinuz")
    err = host.pvhyp("create", missing, check=False)
    assert err.returncode == 2 and err.stderr.count("\n") == 1 and "cannot read" in err.stderr
    for args in (("console", "nosuch"), ("destroy", "0"), ("pause", "nosuch"), ("domid", "nosuch")):
        err = host.pvhyp(*args, check=False)
        assert err.returncode == 2 and err.stderr.startswith("pvhyp: ") and err.stderr.count("\n") == 1, args
    assert "Domain-0" in names(host)


def test_two_guests_share_a_granted_page_and_an_event_channel(host):
    host.pvhyp("create", host.config("accepter", "python:pvguest.examples.share:accept"))
    accepter = host.pvhyp("domid", "accepter").stdout.strip()
    host.pvhyp("create", host.config("offerer", "python:pvguest.examples.share:offer",
                                     extra=f"peer={accepter} message=squeamish-ossifrage"))
    host.wait_for(lambda: "reply 're: squeamish-ossifrage', grant revoked: True" in host.console_log("offerer"),
                  what="the offerer's report")
    assert "got 'squeamish-ossifrage'" in host.console_log("accepter")
    for name in ("offerer", "accepter"):      # both power off when done; on_poweroff destroys them
        host.wait_for(lambda name=name: name not in names(host), what=f"{name} to finish")


def test_a_guest_scribbling_on_its_console_ring_hurts_nobody_else(host):
    host.pvhyp("create", host.config("scribbler", "python:pvguest.examples.hostile:console_scribbler"))
    host.wait_for(lambda: "is corrupt" in host.console_log("scribbler"), what="the corrupt-ring report")
    host.pvhyp("create", host.config("bystander", "python:pvguest.examples.hello"))
    host.wait_for(lambda: "Hello from bystander" in host.console_log("bystander"))
    assert "r" in names(host)["scribbler"][3]         # still running: only its console is ignored
    host.pvhyp("destroy", "scribbler")
    host.pvhyp("destroy", "bystander")


def test_the_guests_survive_dom0_dying(tmp_path_factory, start_host):
    host = start_host(str(tmp_path_factory.mktemp("dom0death")))
    try:
        host.pvhyp("create", host.config("survivor", "python:pvguest.examples.hello"))
        host.wait_for(lambda: "Hello from survivor" in host.console_log("survivor"))
        state = host.state()
        os.kill(state["dom0_pid"], signal.SIGKILL)
        state = host.wait_for(lambda: (s := host.state()) and not s["dom0_alive"] and s, what="the report")
        assert state["guests"] == [1] and "dom0 (pid" in state["note"] and "keeps running 1 guest" in state["note"]
        with open(os.path.join(host.run_dir, "hostd.log")) as f:
            assert "the hypervisor keeps running 1 guest(s): [1]" in f.read()
        # the toolstack commands say what happened, where dom0's log is, and the way back
        dom0_log = os.path.join(host.run_dir, "dom0.log")
        for args in (("list",), ("destroy", "survivor"), ("up",)):
            done = host.pvhyp(*args, check=False)
            assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr)
            assert "died: it was killed by SIGKILL" in done.stderr and dom0_log in done.stderr, done.stderr
            assert "cannot take over running guests" in done.stderr and "pvhyp down" in done.stderr
        host.pvhyp("down")
        done = host.pvhyp("list", check=False)
        assert done.returncode == 2 and done.stderr == f"pvhyp: not up in {host.run_dir} " \
            "(no hypervisor process; start one with `pvhyp up`)\n", done.stderr
    finally:
        host.pvhyp("down", check=False)


def test_reboot_restarts_and_a_crash_is_preserved(host):
    host.pvhyp("create", host.config("phoenix", "python:pvguest.examples.hello"))
    first = host.pvhyp("domid", "phoenix").stdout.strip()
    host.wait_for(lambda: host.console_log("phoenix").count("Hello from phoenix") == 1)
    host.pvhyp("reboot", "phoenix")
    host.wait_for(lambda: host.console_log("phoenix").count("Hello from phoenix") == 2, what="the restart")
    assert "phoenix shut down (reboot), action restart" in host.console_log("phoenix")
    assert host.pvhyp("domid", "phoenix").stdout.strip() != first
    host.pvhyp("destroy", "phoenix")
    host.pvhyp("create", host.config("crasher", "python:pvguest.examples.hostile:crasher", on_crash="preserve"))
    host.wait_for(lambda: "shut down (crash), action preserve" in host.console_log("crasher"))
    assert "RuntimeError: deliberate guest failure" in host.console_log("crasher")
    assert names(host)["crasher"][3][4] == "c"
    host.pvhyp("destroy", "crasher")


XTF_EXAMPLE = "/work/shared/xtf/test-pv64-example"


@pytest.fixture
def xtf_host(tmp_path_factory, start_host):
    if not os.path.exists(XTF_EXAMPLE):
        pytest.skip("no XTF kernels here")
    host = start_host(str(tmp_path_factory.mktemp("xtf")))
    host.pvhyp("create", host.config("xtf", XTF_EXAMPLE, memory=8, on_poweroff="preserve", on_crash="preserve"))
    yield host
    host.pvhyp("down", check=False)


def test_an_xtf_kernel_boots_under_pvhyp_up(xtf_host):
    domid = xtf_host.pvhyp("domid", "xtf").stdout.strip()
    # XTF reports through console_io: the builder, the engine and console_io all played their part
    xtf_host.wait_for(lambda: f"(d{domid}) Test result: SUCCESS" in xtf_host.pvhyp("dmesg").stdout,
                      what="XTF's verdict")
    assert f"(d{domid}) Hello World" in xtf_host.pvhyp("dmesg").stdout


def test_an_xtf_domain_is_destroyed(xtf_host):
    xtf_host.wait_for(lambda: "Test result" in xtf_host.pvhyp("dmesg").stdout, what="XTF's verdict")
    xtf_host.pvhyp("destroy", "xtf")
    assert "xtf" not in names(xtf_host)


def test_console_on_a_real_terminal_restores_it_on_ctrl_close_bracket(host):
    import pty
    import termios
    host.pvhyp("create", host.config("termguest", "python:pvguest.examples.hello"))
    host.wait_for(lambda: "Hello from termguest" in host.console_log("termguest"))
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                             "console", "termguest"], env=host.env, cwd=host.root,
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    try:
        host.wait_for(lambda: termios.tcgetattr(slave)[3] & termios.ICANON == 0, what="raw mode")
        os.write(master, b"tty-ping\r")
        host.wait_for(lambda: "echo: tty-ping" in host.console_log("termguest"), what="the echo")
        os.write(master, b"\x1d")
        assert proc.wait(timeout=10) == 0
        assert termios.tcgetattr(slave) == before          # the user's terminal is given back as it was
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    host.pvhyp("destroy", "termguest")

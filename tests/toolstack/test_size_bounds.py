"""Sizes from configs and images are bounded before anything is allocated (issue 14, defects 4 and 7).

`memory = 100000` on a host with less, `memory = 8000000` against a small
hypervisor, `memory = 1000000000`, `kernel = "/dev/zero"`, `ramdisk =
"/dev/zero"` and a config that is not UTF-8 each get one line naming
FILE:LINE and the setting, exit 2, under `pvhyp run` and under `pvhyp
create`. Every command here runs with its address space capped
(RLIMIT_AS), so a regression is a failure, never this machine's OOM killer.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from tests.toolstack.conftest import ROOT

ADDRESS_SPACE_CAP = 8 << 30         # above what the commands need (unicorn reserves ~1 GiB per instance)
XTF_EXAMPLE = "/work/shared/xtf/test-pv64-example"


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def host_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def one_line_exit_2(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvhyp: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def kernel() -> str:
    """A real PV kernel where there is one: dom0 must refuse before it reads or builds it."""
    return XTF_EXAMPLE if os.path.exists(XTF_EXAMPLE) else "/bin/true"


def write(tmp_path, name: str, body: bytes) -> str:
    path = tmp_path / f"{name}.cfg"
    path.write_bytes(f'name = "{name}"\n'.encode() + body)
    return str(path)


def oversized_configs(tmp_path) -> list[tuple[str, tuple[str, ...]]]:
    """(config path, words its error line must hold)."""
    k = kernel().encode()
    return [
        (write(tmp_path, "hostsize", b'kernel = "' + k + b'"\nmemory = %d\n' % (host_mb() + 1024)),
         ("hostsize.cfg:3: memory",)),
        (write(tmp_path, "giga", b'kernel = "' + k + b'"\nmemory = 1000000000\n'), ("giga.cfg:3: memory",)),
        (write(tmp_path, "zero", b'kernel = "/dev/zero"\nmemory = 8\n'), ("zero.cfg:2: kernel", "/dev/zero")),
        (write(tmp_path, "zerord", b'kernel = "' + k + b'"\nramdisk = "/dev/zero"\nmemory = 8\n'),
         ("zerord.cfg:3: ramdisk", "/dev/zero")),
        (write(tmp_path, "latin1", b'kernel = "' + k + b'"\nmemory = 8\n# caf\xe9\n'),
         ("latin1.cfg:4", "UTF-8")),
    ]


def test_run_refuses_sizes_and_bytes_it_cannot_take(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    for path, words in oversized_configs(tmp_path):
        proc = subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                               "run", "--timeout", "20", path], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60, preexec_fn=capped)
        one_line_exit_2(proc, *words)


def test_create_refuses_sizes_and_bytes_it_cannot_take(tmp_path, start_host):
    from tests.toolstack.conftest import Host
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    host = Host(str(run_dir))
    # the cap is inherited by hostd and dom0: a dom0 that allocates without bound fails, not the machine
    host.pvhyp("up", "--memory", "96", preexec_fn=capped)
    try:
        beyond_free = [
            (write(tmp_path, "bigpy", b'kernel = "python:pvguest.examples.hello"\n\nmemory = 8000000\n'),
             ("bigpy.cfg:4: memory", "ENOMEM")),
            (write(tmp_path, "bigx86", b'kernel = "' + kernel().encode() + b'"\nmemory = 8000000\n'),
             ("bigx86.cfg:3: memory", "ENOMEM")),
        ]
        for path, words in beyond_free + oversized_configs(tmp_path)[1:]:
            one_line_exit_2(host.pvhyp("create", path, check=False, timeout=60), *words)
        # and dom0 is still there, with nothing left behind
        assert [line.split()[0] for line in host.pvhyp("list").stdout.splitlines()[1:]] == ["Domain-0"]
    finally:
        host.pvhyp("down", check=False)


def test_the_builder_asks_for_frames_before_it_lists_them(tmp_path):
    """build_pv_domain on its own: ENOMEM from populate_physmap, with no page list made first
    (in a capped child: a list of 2**31 pfns would need ~80 GB)."""
    if not os.path.exists(XTF_EXAMPLE):
        pytest.skip("no XTF kernels here")
    code = f"""
from abi.errno import ENOMEM
from dom0.builder import build_pv_domain
from dom0.xc import XenCtrl, XenError
from pvhyp.channel import InProcessChannel, create_process_domain
from pvhyp.host import build_hypervisor
hv = build_hypervisor(64, cpu=False)
dom0 = create_process_domain(hv, nr_pages=256, privileged=True, domid=0)
xc = XenCtrl(InProcessChannel(hv, dom0))
free = hv.frames.free_frames
domid = xc.domain_create(max_vcpus=1)
try:
    build_pv_domain(xc, domid, open({XTF_EXAMPLE!r}, "rb").read(), 8000000)
except XenError as e:
    assert e.errno == ENOMEM, e
else:
    raise AssertionError("built")
xc.domain_destroy(domid)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, preexec_fn=capped)
    assert proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_every_size_setting_is_bounded_in_the_config():
    from dom0.toolstack.config import ConfigError, parse_config
    for text, where in (("memory = 1000000000", "g.cfg:3: memory"), ("maxmem = 1000000000", "g.cfg:3: maxmem"),
                        ("maxvcpus = 1000000000", "g.cfg:3: maxvcpus"), ("vcpus = 1000000000", "g.cfg:3: vcpus")):
        with pytest.raises(ConfigError) as e:
            parse_config(f'name = "g"\nkernel = "k"\n{text}\n', "g.cfg")
        assert str(e.value).startswith(where), e.value
    with pytest.raises(ConfigError) as e:          # JSON on the toolstack socket can carry a lone surrogate
        parse_config('name = "g"\nkernel = "k"\n# \udcff\n', "g.cfg")
    assert str(e.value).startswith("g.cfg:3: not UTF-8")

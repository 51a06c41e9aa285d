"""Shared fixtures: a small hypervisor with every subsystem and handler (with or without the
CPU engine), and where the XTF kernels are."""
from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def xtf_dir() -> pathlib.Path | None:
    """XTF PV64 kernels: $PVHYP_XTF_DIR, else ../shared/xtf beside the project."""
    for candidate in (os.environ.get("PVHYP_XTF_DIR"), ROOT.parent / "shared" / "xtf"):
        if candidate and pathlib.Path(candidate).is_dir():
            return pathlib.Path(candidate)
    return None


@pytest.fixture
def hv():
    from pvhyp.host import build_hypervisor
    h = build_hypervisor(64, cpu=False)
    yield h
    h.close()


@pytest.fixture
def cpu_hv():
    """`hv` with the CPU engine: x86 PV guests run on vCPU threads."""
    from pvhyp.host import build_hypervisor
    h = build_hypervisor(64, cpu=True)
    yield h
    h.close()


# A child process that shares pytest's stdout pipe can switch the pipe's file
# description to O_NONBLOCK; pytest's later writes then fail with EAGAIN and
# the end of the report (the closing "N passed" line CI reads) is lost.
# Restore blocking mode after every test, and name the test that changed it.
_NONBLOCKING_AFTER: list[str] = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    for fd in (1, 2):
        try:
            if not os.get_blocking(fd):
                _NONBLOCKING_AFTER.append(f"{item.nodeid} (fd {fd})")
                os.set_blocking(fd, True)
        except OSError:
            pass


def pytest_terminal_summary(terminalreporter):
    if _NONBLOCKING_AFTER:
        terminalreporter.write_line("stdout/stderr left non-blocking by: " + ", ".join(_NONBLOCKING_AFTER))

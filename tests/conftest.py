"""Shared fixtures: a small hypervisor with every handler installed, and where the XTF kernels are."""
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
    import hypercalls
    from pvhyp.hypervisor import Hypervisor
    h = Hypervisor(memory_mb=64)
    hypercalls.install(h.hypercalls)
    yield h
    h.memory.close()

"""`pvhyp bench boot`'s KVM column: the same Debian boot on the KVM engine, with its exits by kind.

Its own module so that the boot benchmark (pvhyp/cli/bench_boot.py) only calls it: the
unicorn boot runs first as before, then this one when /dev/kvm passes its self-test.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from pvhyp.kvm.choice import ACCEL_ENV


@contextlib.contextmanager
def accel(name: str) -> Iterator[None]:
    """Hypervisors built inside run on `name` (build_hypervisor reads $PVHYP_ACCEL)."""
    old = os.environ.get(ACCEL_ENV)
    os.environ[ACCEL_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ACCEL_ENV, None)
        else:
            os.environ[ACCEL_ENV] = old


def kvm_column(boot_pvhyp, image: dict, memory: int, timeout: float, extra: str) -> tuple[list[str], float | None]:
    """(lines to print, seconds to the marker or None)."""
    from pvhyp.kvm.quirks import probe
    from pvhyp.kvm.vm import KvmUnavailable
    try:
        quirks = probe()
    except KvmUnavailable as err:
        return [f"pvhyp_kvm_boot_to_marker: skipped ({err})"], None
    with accel("kvm"):
        result = boot_pvhyp(image, memory, timeout, extra)
    lines = [f"pvhyp_kvm_engine: {quirks.describe()}"]
    if result["reached"]:
        lines.append(f"pvhyp_kvm_boot_to_marker: {result['seconds']:.2f} s")
    else:
        lines.append(f"pvhyp_kvm_boot_to_marker: not reached (stopped after {result['seconds']:.2f} s; "
                     f"last line: {result['last_line']})")
        if result.get("diagnosis"):
            print(result["diagnosis"], file=sys.stderr)     # why, as the unicorn column prints it
    exits = result.get("kvm_exits") or {}
    for kind, count in sorted(exits.items(), key=lambda item: -item[1]):
        lines.append(f"pvhyp_kvm_exits_{kind}: {count}")
    return lines, result["seconds"] if result["reached"] else None

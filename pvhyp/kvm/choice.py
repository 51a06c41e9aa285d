"""Which CPU engine runs x86 guests: `--accel auto|kvm|unicorn`, and why, in one line.

`auto` is KVM when /dev/kvm opens, its self-test (pvhyp/kvm/quirks.py) passes and
the guest's page tables are walked by hardware (EPT/NPT); the software CPU (unicorn)
otherwise. Under shadow paging (this machine kind's nested kvm_pvm) every exit costs
over a hundred microseconds of CPU, most of it inside KVM_RUN (a null hypercall: about
100 us in kvm_pvm's syscall and exception delivery, 20 us in Python), and each
page-table write a CPL0 replay. Measured with `pvhyp bench boot` (Dec 2026): Debian
reached its shell in 30.2 s on KVM and 9.1 s on unicorn (QEMU TCG 5.2 s); on a loaded
machine in one run, 52.8 s on KVM, 24.4 s on unicorn, 15.2 s on QEMU TCG. So auto
leaves KVM to `--accel kvm` there. The CLI's --accel reaches every process it starts
(hostd, XTF's workers) as PVHYP_ACCEL; build_hypervisor reads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from pvhyp.kvm.quirks import KvmQuirks, probe
from pvhyp.kvm.vm import KVM_DEVICE, KvmUnavailable

ACCELS = ("auto", "kvm", "unicorn")
ACCEL_ENV = "PVHYP_ACCEL"


@dataclass
class EngineChoice:
    name: str                       # "kvm" or "unicorn"
    reason: str
    quirks: KvmQuirks | None = None

    @property
    def line(self) -> str:
        return f"CPU engine: {self.name} ({self.reason})"


def accel_from_environment(default: str) -> str:
    return os.environ.get(ACCEL_ENV) or default


def choose_engine(accel: str) -> EngineChoice:
    """Raises KvmUnavailable only when KVM was asked for by name and cannot run."""
    if accel not in ACCELS:
        raise ValueError(f"accel {accel!r}: one of {', '.join(ACCELS)}")
    if accel == "unicorn":
        return EngineChoice("unicorn", "asked for")
    try:
        quirks = probe()
    except KvmUnavailable as err:
        if accel == "kvm":
            raise
        return EngineChoice("unicorn", f"KVM not usable: {err}")
    if accel == "auto" and quirks.shadow_paging:
        return EngineChoice("unicorn", f"{KVM_DEVICE} works, but with {quirks.describe()}: "
                                       "there the software CPU boots PV guests faster; --accel kvm uses it")
    how = "asked for" if accel == "kvm" else f"{KVM_DEVICE} opens and its self-test passed"
    return EngineChoice("kvm", f"{how}: {quirks.describe()}", quirks)

"""x86 PV guests on the KVM engine: the engine-independent integration tests, the MMU
isolation the page-table replay exists for, XTF kernels, and the fallback to unicorn.

Skipped, with the self-test's one line, where /dev/kvm cannot run guests."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cpu import test_integration as software_cpu_suite
from tests.cpu.guest_kit import load_into_domain
from tests.cpu.test_integration import wait_for

XTF_DIR = os.environ.get("PVHYP_XTF_DIR", "/work/shared/xtf")


def _kvm_reason() -> str | None:
    from pvhyp.kvm.quirks import probe
    from pvhyp.kvm.vm import KvmUnavailable
    try:
        probe()
    except KvmUnavailable as err:
        return str(err)
    return None


KVM_MISSING = _kvm_reason()
needs_kvm = pytest.mark.skipif(KVM_MISSING is not None, reason=f"KVM not usable here: {KVM_MISSING}")


@pytest.fixture
def kvm_hv():
    if KVM_MISSING is not None:
        pytest.skip(f"KVM not usable here: {KVM_MISSING}")
    from pvhyp.host import build_hypervisor
    hv = build_hypervisor(64, cpu=True, accel="kvm")
    assert hv.cpu is not None and hv.cpu.engine_name == "kvm", hv.cpu.engine_line if hv.cpu else None
    yield hv
    hv.close()


@pytest.mark.parametrize("name", ["test_guest_prints_and_powers_off", "test_guest_crash_is_contained",
                                  "test_second_vcpu_brought_up_by_the_guest"])
def test_software_cpu_integration_suite_on_kvm(kvm_hv, name):
    """tests/cpu/test_integration.py's guests, unchanged, on the KVM engine."""
    getattr(software_cpu_suite, name)(kvm_hv)


def _l1_entry_maddr(hv, l4: int, va: int) -> int:
    table = l4
    for shift in (39, 30, 21):
        entry = hv.memory.read_u64((table << 12) + ((va >> shift) & 0x1FF) * 8)
        table = (entry >> 12) & ((1 << 40) - 1)
    return (table << 12) + ((va >> 12) & 0x1FF) * 8


MARKER = 0x5EC2E7


def test_guest_on_kvm_cannot_read_a_frame_after_losing_its_mapping(kvm_hv):
    """The guest maps a page, reads it (KVM shadows the translation), has the hypervisor
    remove the mapping (mmu_update) and gives the frame back (decrease_reservation, after
    which the hypervisor may hand it to anyone); reading the old address must fault.
    Without the page-table replay, kvm_pvm's shadow keeps the old translation and the read
    returns the freed frame's contents."""
    hv = kvm_hv
    d = hv.create_domain(max_vcpus=1, max_pages=0x300)
    symbols, p2m = load_into_domain(hv, d, r"""
main:
    mov $0x1f0000, %rbx
    movq (%rbx), %rax            /* our own page: KVM shadows the translation */
    lea req(%rip), %rdi          /* mmu_update(req, 1, NULL, DOMID_SELF): the PTE goes */
    mov $1, %esi
    xor %edx, %edx
    mov $0x7ff0, %r10
    HYPERCALL 1
    mov %rax, mmu_rc(%rip)
    mov $1, %edi                 /* XENMEM_decrease_reservation(&reservation) */
    lea reservation(%rip), %rsi
    HYPERCALL 12
    mov %rax, release_rc(%rip)
    movq (%rbx), %rax            /* must fault: no trap table, so the domain crashes */
    mov %rax, leaked(%rip)
    mov $2, %edi                 /* SCHEDOP_shutdown(poweroff): only if the read went through */
    lea reason(%rip), %rsi
    HYPERCALL 29
1:  jmp 1b
.data
req: .quad 0, 0
reservation: .quad extent, 1     /* extent_start, nr_extents */
    .long 0, 0                   /* extent_order, mem_flags */
    .short 0x7ff0                /* DOMID_SELF */
    .balign 8
extent: .quad 0x1f0
reason: .long 0
mmu_rc: .quad -1
release_rc: .quad -1
leaked: .quad 0
""")
    def guest_u64(name: str) -> int:
        va = symbols[name]
        return hv.memory.read_u64((p2m[va >> 12] << 12) + (va & 0xFFF))

    def set_guest_u64(name: str, value: int) -> None:
        va = symbols[name]
        hv.memory.write_u64((p2m[va >> 12] << 12) + (va & 0xFFF), value)
    set_guest_u64("req", _l1_entry_maddr(hv, d.vcpus[0].guest_table, 0x1F0000))     # MMU_NORMAL_PT_UPDATE
    victim_frame = p2m[0x1F0]
    set_guest_u64("extent", victim_frame)           # a PV guest names machine frames
    hv.memory.write_u64(victim_frame << 12, MARKER)
    hv.cpu.start_domain(d)
    assert wait_for(lambda: d.is_shut_down, 30), hv.trace.history(d.domid)[-5:]
    assert guest_u64("mmu_rc") == 0 and guest_u64("release_rc") == 1
    assert d.shutdown_reason == 3, f"the read went through: it returned {guest_u64('leaked'):#x}"
    assert guest_u64("leaked") != MARKER
    assert hv.frames.owner[victim_frame] != d.domid
    hv.cpu.stop_domain(d)


def _pvhyp(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


needs_xtf = pytest.mark.skipif(not os.path.isdir(XTF_DIR), reason=f"no XTF kernels in {XTF_DIR}")


@needs_kvm
@needs_xtf
def test_xtf_kernels_on_kvm_say_which_engine_runs():
    result = _pvhyp("xtf", "--accel", "kvm", "--only", "example", "selftest", "xsa-188", "pv-iopl", XTF_DIR)
    assert "CPU engine: kvm" in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 SUCCESS" in result.stdout or "5 SUCCESS" in result.stdout, result.stdout


@needs_xtf
def test_without_dev_kvm_everything_falls_back_to_unicorn_with_one_line(tmp_path):
    missing = str(tmp_path / "no-kvm")
    result = _pvhyp("run", "--kernel", os.path.join(XTF_DIR, "test-pv64-example"), "--timeout", "120",
                    env={"PVHYP_KVM_DEVICE": missing, "PVHYP_ACCEL": ""})
    engine_lines = [line for line in result.stderr.splitlines() if "CPU engine" in line]
    assert engine_lines == [f"pvhyp: CPU engine: unicorn (KVM not usable: {missing}: No such file or directory)"]
    assert result.returncode == 0 and "Test result: SUCCESS" in result.stdout + result.stderr, result.stderr


def test_asking_for_kvm_without_it_is_a_one_line_user_error(tmp_path):
    missing = str(tmp_path / "no-kvm")
    result = _pvhyp("run", "--accel", "kvm", "--kernel", "/nonexistent-kernel",
                    env={"PVHYP_KVM_DEVICE": missing}, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"pvhyp: --accel kvm: {missing}: No such file or directory"]


@pytest.mark.slow
@needs_kvm
@needs_xtf
def test_every_xtf_verdict_on_kvm_is_the_software_cpus():
    """The whole XTF set on both engines, verdict by verdict (a few minutes)."""
    import re
    verdicts = {}
    for accel in ("unicorn", "kvm"):
        out = _pvhyp("xtf", "--accel", accel, XTF_DIR, timeout=1800).stdout
        verdicts[accel] = dict(re.findall(r"^(\S+)\s+(SUCCESS|SKIP|ERROR|FAILURE|CRASH)", out, re.M))
    assert verdicts["kvm"] == verdicts["unicorn"]


@pytest.mark.slow
@needs_kvm
def test_debian_shell_suite_on_kvm():
    """tests/debian/test_boot.py (boot to the busybox shell, commands, poweroff) on KVM."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/debian/test_boot.py"], capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "PVHYP_ACCEL": "kvm"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-500:]

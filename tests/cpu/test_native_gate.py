"""Uncounted runs and their stops (pvhyp.cpu.native_gate): exact, from any thread, bounded in time."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from pvhyp.cpu import native_gate
from pvhyp.pv.engine_interface import ExitReason
from tests.cpu.guest_kit import GuestMachine

ITERATIONS = 2_000_000


@pytest.fixture(scope="module")
def machine():
    return GuestMachine()


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None, reason="needs binutils")
def test_stub_bytes_are_the_assembly_source(tmp_path):
    source = tmp_path / "gate.s"
    source.write_text(native_gate.STUB_ASSEMBLY)
    subprocess.run(["as", str(source), "-o", str(tmp_path / "gate.o")], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "gate.o"), str(tmp_path / "gate.bin")],
                   check=True)
    assert (tmp_path / "gate.bin").read_bytes() == native_gate.STUB_CODE
    symbols = subprocess.run(["nm", str(tmp_path / "gate.o")], check=True, capture_output=True, text=True).stdout
    found = {line.split()[2]: int(line.split()[0], 16) for line in symbols.splitlines()}
    assert found == native_gate.STUB_SYMBOLS


def test_kicks_from_another_thread_never_re_execute_a_store(machine):
    """The bug counted slices fixed: a stop landing after a store re-ran the instruction.

    Thousands of kicks land while the guest increments two counters, one with
    `incl mem`, one with a `lock cmpxchg` that must always win; both end exact.
    """
    entry, rec, syms = machine.load_kernel(rf"""
main:
    mov ${ITERATIONS}, %rcx
1:  incl counter(%rip)
    mov locked(%rip), %eax
    lea 1(%rax), %edx
    lock cmpxchg %edx, locked(%rip)
    jnz lost
    dec %rcx
    jnz 1b
    mov counter(%rip), %edi
    mov locked(%rip), %esi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
lost:
    mov $-1, %edi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
.data
counter: .quad 0
locked: .quad 0
""")
    done = threading.Event()
    kicks = 0

    def kicker():
        nonlocal kicks
        while not done.is_set():
            entry.kick()
            kicks += 1
            time.sleep(0.0001)

    thread = threading.Thread(target=kicker)
    thread.start()
    stops = 0
    try:
        for _ in range(1_000_000):
            reason = entry.run()
            if reason is not ExitReason.KICKED:
                break
            stops += 1
    finally:
        done.set()
        thread.join()
    assert reason is ExitReason.REQUESTED, (reason, entry.engine.error)
    assert [args[:2] for args in rec.log] == [(ITERATIONS, ITERATIONS)]
    assert stops > 20, "the kicks did not interrupt the loop: the test proves nothing"


def test_wall_time_budget_ends_an_exit_free_loop(machine):
    entry, rec, syms = machine.load_kernel(r"""
main:
1:  incl counter(%rip)
    jmp 1b
.data
counter: .quad 0
""")
    for budget_us in (2_000, 20_000):
        start = time.monotonic()
        assert entry.run(timeout_us=budget_us) is ExitReason.BUDGET
        assert time.monotonic() - start < 2.0      # bounded (a loaded CI machine), not a benchmark


def test_refused_out_stops_before_the_next_instruction_stores(machine):
    """A refused `out` faults at the instruction; the store right after it never happens."""
    entry, rec, syms = machine.load_kernel(r"""
main:
    movq $1, skip_len(%rip)           /* the #GP stub resumes past the 1-byte `out` */
    movq $0, touched(%rip)
    mov $0x80, %dx
denied_out:
    out %al, %dx
    incl touched(%rip)
    mov touched(%rip), %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
.data
touched: .quad 0
""")
    entry.pv.iopl = 0
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED, entry.crash_reason
    assert rec.log[0][:3] == (13, 0, syms["denied_out"])
    assert rec.log[1][0] == 1          # incl ran once, after the #GP: not before it as well


def test_write_watchpoint_on_incl_traps_once_after_it(machine):
    """A data breakpoint stops the run before the next instruction, no step with count=1:
    the `incl` that hit retires exactly once and #DB reports the instruction after it."""
    from pvhyp.pv import state as pv_state
    from pvhyp.pv import xen_area as L
    entry, rec, syms = machine.load_kernel(r"""
main:
    HYPERCALL 42                 /* test hook: arm %dr0 on `data` (write, 4 bytes) */
    incl data(%rip)
after_incl:
    nop
    mov data(%rip), %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
db_handler:
    pop %rcx
    pop %r11
    pushq $-1
    pushq $1
    jmp common_trap
.data
.align 8
data: .quad 0
""")
    pv_state.set_trap_entry(entry.pv, 1, 0, L.FLAT_KERNEL_CS, syms["db_handler"])
    recorder = entry.dispatch

    def dispatch(v, nr, args):
        if nr == 42:
            v.pv.dr[0] = syms["data"]
            v.pv.dr7 = 1 | (1 << 16) | (3 << 18)        # L0, write, 4 bytes
            v.watchpoints.reload()
            return 0
        return recorder(v, nr, args)
    entry.dispatch = dispatch
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED, (entry.crash_reason, entry.engine.error)
    assert rec.log[0][:3] == (1, (1 << 64) - 1, syms["after_incl"])
    assert rec.log[1][0] == 1
    assert entry.pv.dr6 & 1

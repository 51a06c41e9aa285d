"""No event is lost between a sender on another thread and a guest taking events.

The netfront stall behind netback's re-kick: `PvEntry.post` decided "the vCPU is
not running, apply the work here" without a lock, so a vCPU thread entering
run() at that moment ran guest code beside our read-modify-write of the event
words. Linux's upcall `xchg`es evtchn_pending_sel to zero and `lock btr`s each
pending bit; neither is atomic against our stores, so the bit we had just set
could be written back away. A pending bit without its selector bit is never
looked at again (a later send finds it already set and raises nothing): the
port is dead until someone re-kicks.

This guest does what Linux does with three IPI ports in one selector word and
blocks between upcalls; three host threads send on them with EVTCHNOP_send, each
waiting for the guest to count its previous event before the next. A lost event
leaves its sender waiting for good: the test fails naming it. A short switch
interval makes Python change threads at every opportunity, so the windows the
race needs come often. No timing is asserted; the deadline only detects a hang.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time

import pytest

from tests.pvvcpu.test_engine_timer import map_page

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs binutils to assemble the test kernel")

SHINFO_VA = 0x1FE000
SENDERS = 3
EVENTS_PER_SENDER = 100
HANG_SECONDS = 20.0         # no progress this long on one port: its event was lost

GUEST = rf"""
.macro BIND_IPI ipi              /* EVTCHNOP_bind_ipi to vcpu 0 */
    mov $7, %edi
    lea \ipi(%rip), %rsi
    HYPERCALL 32
.endm
main:
    xor %edx, %edx               /* set_callbacks: the event callback, no failsafe */
    xor %esi, %esi
    lea event_callback(%rip), %rdi
    HYPERCALL 4
    BIND_IPI ipi0
    BIND_IPI ipi1
    BIND_IPI ipi2
    movl $1, ready(%rip)
1:  mov $1, %edi                 /* SCHEDOP_block */
    xor %esi, %esi
    HYPERCALL 29
    jmp 1b

.set SHINFO, {SHINFO_VA:#x}
.macro TAKE ipi, count
    mov \ipi + 4(%rip), %ecx
    lock btrq %rcx, SHINFO + 2048
    jnc 8f
    incl \count(%rip)
8:
.endm

event_callback:                  /* Linux's order: upcall_pending, then xchg the selector */
    movb $0, SHINFO
    xor %eax, %eax
    xchg %rax, SHINFO + 8
    test $1, %al
    jz 9f
    TAKE ipi0, count0
    TAKE ipi1, count1
    TAKE ipi2, count2
9:  pop %rcx
    pop %r11
    XEN_IRET
.data
.globl ipi0, ipi1, ipi2, ready, count0, count1, count2
ipi0: .long 0, 0
ipi1: .long 0, 0
ipi2: .long 0, 0
ready: .long 0
count0: .long 0
count1: .long 0
count2: .long 0
"""


def test_events_sent_from_other_threads_are_never_lost(cpu_hv):
    from pvhyp.event_channel import evtchn_send
    from tests.cpu.guest_kit import load_into_domain

    hv = cpu_hv
    d = hv.create_domain(max_vcpus=1, max_pages=0x300)
    symbols, p2m = load_into_domain(hv, d, GUEST)
    map_page(hv, d.vcpus[0].guest_table, SHINFO_VA, d.shared_info_mfn)

    def guest_u32(name: str, offset: int = 0) -> int:
        va = symbols[name] + offset
        return int.from_bytes(hv.memory.read((p2m[va >> 12] << 12) + (va & 0xFFF), 4), "little")

    hv.cpu.start_domain(d)
    old_interval = sys.getswitchinterval()
    failures: list[str] = []

    def sender(index: int) -> None:
        port = guest_u32(f"ipi{index}", 4)
        for sent in range(1, EVENTS_PER_SENDER + 1):
            rc = evtchn_send(d, port)
            if rc:
                failures.append(f"EVTCHNOP_send on port {port}: {rc}")
                return
            last_progress = time.monotonic()
            while guest_u32(f"count{index}") < sent:
                if d.is_shut_down or time.monotonic() - last_progress > HANG_SECONDS:
                    failures.append(f"port {port}: event {sent} of {EVENTS_PER_SENDER} never reached the "
                                    f"guest (it counted {guest_u32(f'count{index}')})")
                    return
                time.sleep(0)

    try:
        deadline = time.monotonic() + HANG_SECONDS
        while not guest_u32("ready") and not d.is_shut_down and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guest_u32("ready"), (d.vcpus[0].arch.crash_reason, hv.trace.history(d.domid)[-5:])
        sys.setswitchinterval(1e-6)
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
        hv.cpu.stop_domain(d)
    assert not failures, failures
    assert [guest_u32(f"count{i}") for i in range(SENDERS)] == [EVENTS_PER_SENDER] * SENDERS


RACE_GUEST = r"""
main:
    movl $1, started(%rip)
1:  jmp 1b
.data
.globl started
started: .long 0
"""
APPLYING_SECONDS = 0.5      # how long the posted work below looks for guest code running beside it


def test_guest_code_never_runs_while_another_thread_applies_posted_work(cpu_hv):
    """The race itself, made certain: work posted while the vCPU is not running is applied
    on the poster's thread; a vCPU thread entering run() meanwhile must wait for it."""
    from tests.cpu.guest_kit import load_into_domain

    hv = cpu_hv
    d = hv.create_domain(max_vcpus=1, max_pages=0x300)
    symbols, p2m = load_into_domain(hv, d, RACE_GUEST)
    va = symbols["started"]
    started_at = (p2m[va >> 12] << 12) + (va & 0xFFF)
    vcpu = d.vcpus[0]
    cpu = hv.cpu.cpu_for(vcpu)
    assert hv.cpu._load_initial_registers(vcpu, cpu)
    applying, seen = threading.Event(), []

    def posted_work() -> None:          # stands for set_pending_bits' read-modify-write
        applying.set()
        end = time.monotonic() + APPLYING_SECONDS
        while time.monotonic() < end and not seen:
            if hv.memory.read(started_at, 4) != bytes(4):
                seen.append("guest code ran while posted work was being applied")
            time.sleep(0.001)

    poster = threading.Thread(target=vcpu.post, args=(posted_work,))
    poster.start()
    assert applying.wait(10)
    cpu.run(timeout_us=50_000)          # the vCPU's thread, entering run() right now
    poster.join()
    assert not seen, seen
    assert hv.memory.read(started_at, 4) == (1).to_bytes(4, "little")     # and then it ran

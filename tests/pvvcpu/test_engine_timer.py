"""End to end on the CPU engine: a guest arms a periodic timer, blocks, and takes
VIRQ_TIMER upcalls (timer thread -> event channel -> kick -> scheduler wake ->
upcall on return from SCHEDOP_block)."""
from __future__ import annotations

import shutil
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs binutils to assemble the test kernel")

VI_VA, SHINFO_VA = 0x1FD000, 0x1FE000


def map_page(hv, l4, va, mfn):
    table = l4
    for shift in (39, 30, 21):
        table = (hv.memory.read_u64((table << 12) + ((va >> shift) & 0x1FF) * 8) >> 12) & 0xFF_FFFF_FFFF
    hv.memory.write_u64((table << 12) + ((va >> 12) & 0x1FF) * 8, (mfn << 12) | 0x7)


def test_periodic_timer_wakes_a_blocked_guest(cpu_hv):
    from tests.cpu.guest_kit import load_into_domain

    hv = cpu_hv
    d = hv.create_domain(max_vcpus=1, max_pages=0x300)
    symbols, p2m = load_into_domain(hv, d, rf"""
.set VI, {VI_VA:#x}
.set SHINFO, {SHINFO_VA:#x}
main:
    lea event_callback(%rip), %rdi
    xor %esi, %esi
    xor %edx, %edx
    HYPERCALL 4                  /* set_callbacks */
    mov $10, %edi                /* VCPUOP_register_vcpu_info */
    xor %esi, %esi
    lea vi_arg(%rip), %rdx
    HYPERCALL 24
    mov %eax, rc_vcpu_info(%rip)
    mov $1, %edi                 /* EVTCHNOP_bind_virq (VIRQ_TIMER, vcpu 0) */
    lea bind(%rip), %rsi
    HYPERCALL 32
    mov %eax, rc_bind(%rip)
    mov $6, %edi                 /* VCPUOP_set_periodic_timer */
    xor %esi, %esi
    lea period(%rip), %rdx
    HYPERCALL 24
    mov %eax, rc_periodic(%rip)
1:  cmpl $3, ticks(%rip)
    jae 2f
    mov $1, %edi                 /* SCHEDOP_block */
    xor %esi, %esi
    HYPERCALL 29
    incl blocks(%rip)
    jmp 1b
2:  mov $2, %edi                 /* SCHEDOP_shutdown (poweroff) */
    lea reason(%rip), %rsi
    HYPERCALL 29
3:  jmp 3b

event_callback:                  /* rcx, r11, rip, cs, rflags, rsp, ss */
    movb $0, VI                  /* evtchn_upcall_pending */
    movq $0, VI + 8              /* evtchn_pending_sel */
    mov port(%rip), %eax
    lock btrq %rax, SHINFO + 2048
    jnc 4f
    incl ticks(%rip)
4:  pop %rcx
    pop %r11
    XEN_IRET
.data
.globl vi_arg
vi_arg: .quad 0, 0
bind: .long 0, 0
port: .long 0
period: .quad 2000000
reason: .long 0
.globl ticks
ticks: .long 0
.globl blocks
blocks: .long 0
.globl rc_vcpu_info
rc_vcpu_info: .long -1
.globl rc_bind
rc_bind: .long -1
.globl rc_periodic
rc_periodic: .long -1
""")
    def guest_u32(name):
        va = symbols[name]
        return int.from_bytes(hv.memory.read((p2m[va >> 12] << 12) + (va & 0xFFF), 4), "little", signed=True)

    l4 = d.vcpus[0].guest_table
    map_page(hv, l4, SHINFO_VA, d.shared_info_mfn)
    va = symbols["vi_arg"]
    hv.memory.write_u64((p2m[va >> 12] << 12) + (va & 0xFFF), p2m[VI_VA >> 12])
    start = time.monotonic()
    hv.cpu.start_domain(d)
    deadline = start + 20
    while not d.is_shut_down and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert d.is_shut_down and d.shutdown_reason == 0, (d.vcpus[0].arch.crash_reason, hv.trace.history(d.domid)[-5:])
        assert (guest_u32("rc_vcpu_info"), guest_u32("rc_bind"), guest_u32("rc_periodic")) == (0, 0, 0)
        assert guest_u32("ticks") >= 3 and guest_u32("blocks") >= 3
        assert hv.sched.runstate_info(d.vcpus[0])["time"][2] > 0      # time spent blocked
    finally:
        hv.cpu.stop_domain(d)
        hv.time.set_periodic_timer(d.vcpus[0], 0)
    assert not hv.time.timers.errors

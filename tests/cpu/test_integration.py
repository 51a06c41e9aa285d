"""The engine inside a real Hypervisor: real hypercall handlers, scheduler, vCPU thread."""
from __future__ import annotations

import time

from pvhyp.domctl import hypercall_page_bytes
from tests.cpu.guest_kit import load_into_domain

HYPERCALL_PAGE_VA = 0x1F0000


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_guest_prints_and_powers_off(cpu_hv):
    hv = cpu_hv
    d = hv.create_domain(max_vcpus=1, max_pages=0x300)
    symbols, p2m = load_into_domain(hv, d, rf"""
main:
    /* xen_version(XENVER_version) through the hypercall page */
    xor %edi, %edi
    xor %esi, %esi
    call {HYPERCALL_PAGE_VA} + 17 * 32
    mov %eax, version(%rip)
    mov $0, %edi                 /* CONSOLEIO_write */
    mov $msg_end - msg, %esi
    lea msg(%rip), %rdx
    HYPERCALL 18                 /* console_io */
    mov $2, %edi                 /* SCHEDOP_shutdown */
    lea reason(%rip), %rsi
    HYPERCALL 29                 /* sched_op */
1:  jmp 1b
msg: .ascii "hello from a PV guest\n"
msg_end:
.data
reason: .long 0                  /* SHUTDOWN_poweroff */
version: .long 0
""")
    hv.memory.write(p2m[HYPERCALL_PAGE_VA >> 12] << 12, hypercall_page_bytes())
    hv.cpu.start_domain(d)
    assert wait_for(lambda: d.is_shut_down), hv.trace.history(d.domid)[-5:]
    assert d.shutdown_reason == 0, (hv.trace.history(d.domid)[-5:], d.vcpus[0].arch.crash_reason, d.vcpus[0].arch.engine.error)
    data, _ = d.console.read(0, 1000)
    assert data == b"hello from a PV guest\n"
    version = hv.memory.read_u64((p2m[(symbols["version"]) >> 12] << 12) + (symbols["version"] & 0xFFF)) & 0xFFFF_FFFF
    assert version >> 16 >= 4
    hv.cpu.stop_domain(d)
    assert not hv.cpu.threads


def test_guest_crash_is_contained(cpu_hv):
    hv = cpu_hv
    d = hv.create_domain(max_vcpus=1, max_pages=0x300)
    load_into_domain(hv, d, r"""
main:
    ud2                          /* no trap table: Xen crashes the domain */
""")
    hv.cpu.start_domain(d)
    assert wait_for(lambda: d.is_shut_down)
    assert d.shutdown_reason == 3           # SHUTDOWN_crash
    hv.cpu.stop_domain(d)


def test_second_vcpu_brought_up_by_the_guest(cpu_hv):
    """VCPUOP_initialise + VCPUOP_up from vCPU 0 start vCPU 1 on its own thread."""
    from abi.arch_x86_xen import vcpu_guest_context
    from abi.cdefs import plain

    hv = cpu_hv
    d = hv.create_domain(max_vcpus=2, max_pages=0x300)
    symbols, p2m = load_into_domain(hv, d, r"""
main:
    xor %edi, %edi               /* VCPUOP_initialise */
    mov $1, %esi
    mov $context, %rdx
    HYPERCALL 24                 /* vcpu_op */
    mov %eax, init_rc(%rip)
    mov $1, %edi                 /* VCPUOP_up */
    mov $1, %esi
    xor %edx, %edx
    HYPERCALL 24
1:  pause
    jmp 1b
vcpu1_entry:
    mov $0, %edi                 /* CONSOLEIO_write */
    mov $msg_end - msg, %esi
    lea msg(%rip), %rdx
    HYPERCALL 18
    mov $2, %edi                 /* SCHEDOP_shutdown (poweroff) */
    lea reason(%rip), %rsi
    HYPERCALL 29
2:  jmp 2b
msg: .ascii "vcpu1 up\n"
msg_end:
.data
reason: .long 0
init_rc: .long -1
.balign 64
.globl context
context: .fill 5168, 1, 0
""")
    ctx = plain(vcpu_guest_context.parse(bytes(vcpu_guest_context.sizeof())))
    ctx["flags"] = 1 << 2                                     # VGCF_in_kernel
    ctx["user_regs"].update(rip=symbols["vcpu1_entry"], rsp=0x1F0000, rflags=0x202, cs=0xE033, ss=0xE02B)
    ctx["ctrlreg"][3] = d.vcpus[0].guest_table << 12
    ctx["kernel_ss"] = 0xE02B
    raw = vcpu_guest_context.build(ctx)
    va = symbols["context"]
    for page_va in range(va & ~0xFFF, va + len(raw), 4096):
        lo, hi = max(page_va, va), min(page_va + 4096, va + len(raw))
        hv.memory.write((p2m[page_va >> 12] << 12) + (lo & 0xFFF), raw[lo - va:hi - va])
    hv.cpu.start_domain(d)
    assert wait_for(lambda: d.is_shut_down), hv.trace.history(d.domid)[-5:]
    assert d.shutdown_reason == 0
    assert d.console.read(0, 100)[0] == b"vcpu1 up\n"
    hv.cpu.stop_domain(d)

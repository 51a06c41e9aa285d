"""The CPU engine running tiny PV test kernels (assembled at test time)."""
from __future__ import annotations

import threading
import time

import pytest

from pvhyp.cpu.unicorn_quirks import verified_offsets
from pvhyp.pv import state as pv_state
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import ExitReason
from tests.cpu.guest_kit import HOLE_VA, RO_PAGE_VA, USER_STACK_TOP, GuestMachine

MASK64 = (1 << 64) - 1
NO_ERROR_CODE = MASK64       # what the trap stubs log for vectors without one
PF_USER, PF_WRITE, PF_PRESENT = 0x4, 0x2, 0x1


@pytest.fixture(scope="module")
def machine():
    return GuestMachine()


def run_kernel(machine, source, insns=200_000, **kw):
    entry, rec, syms = machine.load_kernel(source, **kw)
    reason = entry.run(max_insns=insns)
    assert entry.engine.error is None, repr(entry.engine.error)
    assert entry.crash_reason is None, entry.crash_reason
    assert reason is ExitReason.REQUESTED and rec.exited, (reason, rec)
    return entry, rec, syms


def test_unicorn_probe_finds_offsets_and_caches():
    offsets = verified_offsets()
    assert offsets is verified_offsets()
    assert offsets.old_exception_offset > offsets.error_code_offset


def test_entry_hypercall_and_exit(machine):
    entry, rec, _ = run_kernel(machine, r"""
main:
    mov $0x1111, %rdi
    mov $0x2222, %rsi
    mov $0x3333, %rdx
    mov $0x4444, %r10
    mov $0x5555, %r8
    HYPERCALL HC_LOG
    mov %rax, %rdi
    HYPERCALL HC_LOG
    mov $99, %eax            /* unknown hypercall: -ENOSYS comes back */
    syscall
    mov %rax, %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
""")
    assert rec.log[0] == (0x1111, 0x2222, 0x3333, 0x4444, 0x5555)
    assert rec.log[1][0] == 0
    assert rec.log[2][0] == (-38) & MASK64
    assert entry.engine.read("cs") & 3 == 3       # CPL3 throughout


def fault_kernel(setup_and_fault: str, skip: int) -> str:
    return rf"""
main:
    movq ${skip}, skip_len(%rip)
{setup_and_fault}
    mov $0xdead, %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
"""


@pytest.mark.parametrize("name, code, skip, vector, error_code, cr2", [
    # The guest kernel sees supervisor-mode error codes (no U bit), as on Xen.
    ("pf_not_present", f"mov ${HOLE_VA}, %rbx\nfault: movb %al, (%rbx)", 2, 14, PF_WRITE, HOLE_VA),
    ("pf_read_only", f"mov ${RO_PAGE_VA + 8}, %rbx\nfault: movb %al, (%rbx)", 2, 14,
     PF_WRITE | PF_PRESENT, RO_PAGE_VA + 8),
    ("pf_hypervisor_page", f"mov ${L.ENTRY_STUB_VA:#x}, %rbx\nfault: movb (%rbx), %al", 2, 14,
     PF_PRESENT, L.ENTRY_STUB_VA),
    ("gp_noncanonical", "mov $0x8000000000000000, %rbx\nfault: movb (%rbx), %al", 2, 13, 0, None),
    ("gp_hlt", "fault: hlt", 1, 13, 0, None),
    ("ud_ud2", "fault: ud2", 2, 6, NO_ERROR_CODE, None),
    ("de_div0", "xor %ecx, %ecx\nfault: div %rcx", 3, 0, NO_ERROR_CODE, None),
])
def test_exception_bounces(machine, name, code, skip, vector, error_code, cr2):
    entry, rec, syms = run_kernel(machine, fault_kernel(code, skip))
    assert len(rec.log) == 2, rec.log
    logged_vector, logged_ec, logged_rip, logged_cr2, logged_cs = rec.log[0]
    assert (logged_vector, logged_ec) == (vector, error_code)
    assert logged_rip == syms["fault"]
    assert logged_cs & 0xFFFF == L.FLAT_KERNEL_CS & ~3   # interrupted kernel context
    assert logged_cs >> 32 == 1                        # saved upcall mask: events were masked
    if cr2 is not None:
        assert logged_cr2 == cr2
    assert rec.log[1][0] == 0xDEAD


def test_int3_and_int_n_dpl(machine):
    entry, rec, syms = machine.load_kernel(r"""
main:
    movq $0, skip_len(%rip)
after_int3_minus_1:
    int3
after_int3:
    int $32                  /* DPL3 gate: delivered */
after_int32:
    movq $2, skip_len(%rip)
fault_int33:
    int $33                  /* DPL0 gate: #GP((33<<3)|2) at the instruction */
    HYPERCALL HC_EXIT
""")
    pv_state.set_trap_entry(entry.pv, 32, 3, L.FLAT_KERNEL_CS, syms["trap_32"])
    pv_state.set_trap_entry(entry.pv, 33, 0, L.FLAT_KERNEL_CS, syms["trap_33"])
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED
    assert [(v, ec, rip) for v, ec, rip, _, _ in rec.log] == [
        (3, NO_ERROR_CODE, syms["after_int3"]),
        (32, NO_ERROR_CODE, syms["after_int32"]),
        (13, (33 << 3) | 2, syms["fault_int33"]),
    ]


def test_hundreds_of_consecutive_faults(machine):
    entry, rec, syms = run_kernel(machine, rf"""
main:
    movq $2, skip_len(%rip)
    mov ${HOLE_VA}, %rbx
    mov $0x8000000000000000, %r12
    mov $200, %r13
1:
pf: movb %al, (%rbx)
gp: movb (%r12), %al
    add $0x1000, %rbx
    dec %r13
    jnz 1b
    HYPERCALL HC_EXIT
""", insns=2_000_000)
    assert len(rec.log) == 400
    for i in range(200):
        assert rec.log[2 * i][:4] == (14, PF_WRITE, syms["pf"], HOLE_VA + i * 0x1000)
        assert rec.log[2 * i + 1][:3] == (13, 0, syms["gp"])


def test_forced_emulation_cpuid(machine):
    _, rec, _ = run_kernel(machine, r"""
main:
    mov $0x40000000, %eax
    xor %ecx, %ecx
    ud2; .ascii "xen"; cpuid
    mov %rdx, %r10
    mov %rax, %rdi
    mov %rbx, %rsi
    mov %rcx, %rdx
    HYPERCALL HC_LOG
    mov $1, %eax
    cpuid                    /* plain cpuid gets the same policy */
    mov %rcx, %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
""")
    eax, ebx, ecx, edx, _ = rec.log[0]
    assert eax == 0x40000005
    assert (ebx.to_bytes(4, "little") + ecx.to_bytes(4, "little") + edx.to_bytes(4, "little")) == b"XenVMMXenVMM"
    assert rec.log[1][0] & (1 << 31)           # hypervisor bit
    assert not rec.log[1][0] & (1 << 28)       # no AVX


def test_msr_and_control_register_emulation(machine):
    entry, rec, syms = run_kernel(machine, r"""
main:
    mov $0xc0000101, %ecx    /* GS_BASE */
    mov $0x12345678, %eax
    mov $0xffff8888, %edx
    wrmsr
    mov $0xc0000101, %ecx
    xor %eax, %eax
    xor %edx, %edx
    rdmsr
    mov %rax, %rdi
    mov %rdx, %rsi
    mov %cr3, %rdx
    mov %cr0, %r10
    HYPERCALL HC_LOG
    movq $2, skip_len(%rip)
    mov $0x12345, %ecx       /* unknown MSR: #GP bounced */
bad_rdmsr:
    rdmsr
    HYPERCALL HC_EXIT
""")
    lo, hi, cr3, cr0, _ = rec.log[0]
    assert (hi << 32 | lo) == 0xFFFF8888_12345678
    assert entry.engine.read("gs_base") == 0xFFFF8888_12345678
    assert cr3 == entry.engine.cr3
    assert cr0 & 0x80000001 == 0x80000001
    assert rec.log[1][:3] == (13, 0, syms["bad_rdmsr"])


def test_port_io_rules(machine):
    entry, rec, syms = machine.load_kernel(r"""
main:
    mov $0x1122334455667788, %rax
    mov $0x80, %dx
    in %dx, %eax             /* iopl 1: reads all ones */
    mov %rax, %rdi
    HYPERCALL HC_LOG
    mov $1, %eax
    HYPERCALL 42             /* test hook: drop iopl to 0 */
    movq $1, skip_len(%rip)
    mov $0x1122334455667788, %rax
denied_in:
    in %dx, %eax
    mov %rax, %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
""")
    entry.pv.iopl = 1
    recorder = entry.dispatch

    def dispatch(v, nr, args):
        if nr == 42:
            v.pv.iopl = 0
            return 0
        return recorder(v, nr, args)
    entry.dispatch = dispatch
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED
    assert rec.log[0][0] == 0x0000_0000_FFFF_FFFF
    assert rec.log[1][:3] == (13, 0, syms["denied_in"])
    assert rec.log[2][0] == 0x1122334455667788     # RAX untouched by the refused `in`


def test_user_mode_round_trip(machine):
    entry, rec, syms = machine.load_kernel(rf"""
main:
    /* iret to user mode: frame rip, cs, rflags, rsp, ss */
    pushq ${L.FLAT_USER_SS}
    pushq ${USER_STACK_TOP}
    pushq $0x202
    pushq ${L.FLAT_USER_CS}
    pushq $user_code
    XEN_IRET

user_code:
    mov $0x77, %rbx
user_syscall:
    syscall                  /* from user mode: to the syscall callback */
back_in_user:
    int $32                  /* DPL3 gate from user mode */
after_int32:
    hlt                      /* never reached: the #GP... */

syscall_entry:               /* rcx, r11, rip, cs, rflags, rsp, ss */
    mov (%rsp), %rdi         /* rcx = return rip */
    mov 16(%rsp), %rsi       /* rip */
    mov 24(%rsp), %rdx       /* cs */
    mov %cr3, %r10
    mov 40(%rsp), %r8        /* user rsp */
    HYPERCALL HC_LOG
    pop %rcx
    pop %r11
    XEN_IRET                 /* back to user mode */

trap32_user:
    mov %cr3, %rdi
    mov 24(%rsp), %rsi       /* cs of the interrupted context */
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
""", with_user_table=True)
    entry.pv.syscall_callback = pv_state.Callback(syms["syscall_entry"])
    pv_state.set_trap_entry(entry.pv, 32, 3, L.FLAT_KERNEL_CS, syms["trap32_user"])
    kernel_cr3 = entry.vcpu.guest_table << 12
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED, entry.crash_reason
    rcx, rip, cs, cr3, user_rsp = rec.log[0]
    assert rcx == rip == syms["back_in_user"]
    assert cs == L.FLAT_USER_CS
    assert cr3 == kernel_cr3
    assert user_rsp == USER_STACK_TOP
    assert rec.log[1][0] == kernel_cr3 and rec.log[1][1] == L.FLAT_USER_CS
    assert entry.pv.kernel_mode


def test_event_upcall_on_hypercall_return(machine):
    entry, rec, syms = machine.load_kernel(r"""
main:
    movb $0, 0x320001        /* unmask events in vcpu_info */
    HYPERCALL 43             /* test hook: marks an event pending */
after_hypercall:
    mov $0x5a, %rdi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
event_callback:              /* rcx, r11, rip, cs, rflags, rsp, ss */
    movb $0, 0x320000        /* consume upcall_pending */
    mov 16(%rsp), %rdi
    movzbl 0x320001, %esi    /* masked on entry */
    mov 32(%rsp), %rdx       /* saved rflags: IF set (was unmasked) */
    HYPERCALL HC_LOG
    pop %rcx
    pop %r11
    XEN_IRET
""")
    entry.pv.event_callback = pv_state.Callback(syms["event_callback"])
    recorder = entry.dispatch
    info = entry.pv.vcpu_info_maddr

    def dispatch(v, nr, args):
        if nr == 43:
            v.engine.memory.buf[info] = 1
            return 0
        return recorder(v, nr, args)
    entry.dispatch = dispatch
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED, entry.crash_reason
    assert rec.log[0][0] == syms["after_hypercall"]
    assert rec.log[0][1] == 1 and rec.log[0][2] & 0x200
    assert rec.log[1][0] == 0x5A
    assert len(rec.log) == 2
    assert entry.engine.memory.buf[info + 1] == 0       # iret restored the mask from IF


def test_kick_preempts_a_spinning_guest(machine):
    entry, rec, _ = machine.load_kernel(r"""
main:
1:  jmp 1b
""")
    threading.Timer(0.05, entry.kick).start()
    start = time.monotonic()
    assert entry.run() is ExitReason.KICKED
    assert time.monotonic() - start < 5


def test_unhandled_exception_crashes_only_the_guest(machine):
    entry, rec, _ = machine.load_kernel(r"""
main:
    ud2
""")
    entry.pv.trap_table.clear()
    assert entry.run(max_insns=1000) is ExitReason.GUEST_CRASH
    assert "unhandled exception vector 6" in entry.crash_reason


def test_guest_cannot_reach_hypervisor_pages(machine):
    """Every hypervisor-only page faults for the guest (supervisor-only)."""
    entry, rec, syms = run_kernel(machine, rf"""
main:
    movq $3, skip_len(%rip)
    mov ${L.PERDOMAIN_VIRT_START:#x}, %rbx
fault1: movq (%rbx), %rax
    mov ${L.TSS_VA:#x}, %rbx
fault2: movq %rax, (%rbx)
    HYPERCALL HC_EXIT
""")
    assert [record[0] for record in rec.log] == [14, 14]


def test_page_table_naming_missing_machine_memory_gives_gp(machine):
    """A PTE the PV MMU would refuse, beyond machine memory: #GP to the guest, no host error."""
    entry, rec, syms = machine.load_kernel(r"""
main:
    movq $3, skip_len(%rip)
    mov $0x3f0000, %rbx
fault:
    movq (%rbx), %rax
    HYPERCALL HC_EXIT
""")
    l4 = entry.vcpu.guest_table
    machine.map(l4, 0x3F0000, (machine.memory.size >> 12) + 0x1000, 0x7)
    assert entry.run(max_insns=100_000) is ExitReason.REQUESTED, (entry.crash_reason, entry.engine.error)
    assert rec.log[0][:3] == (13, 0, syms["fault"])
    assert entry.engine.unmapped_accesses == 1

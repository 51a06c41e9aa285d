"""Hypervisor pages as the guest sees them, descriptor tables, writable page tables."""
from __future__ import annotations

import struct

import pytest

from abi.x86_pte import _PAGE_USER
from pvhyp.mm.pagetype import ROOT_PAGETABLE_FIRST_XEN_SLOT, ROOT_PAGETABLE_LAST_XEN_SLOT
from pvhyp.pv import xen_area as L
from pvhyp.pv.engine_interface import ExitReason
from pvhyp.pv.ro_page_fault import FLAG_ZF
from tests.cpu.guest_kit import GUEST_FIRST_MFN, RO_PAGE_VA, GuestMachine

MASK64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def machine():
    return GuestMachine()


def run(entry, rec, insns=200_000):
    reason = entry.run(max_insns=insns)
    assert entry.engine.error is None, repr(entry.engine.error)
    assert entry.crash_reason is None, entry.crash_reason
    assert reason is ExitReason.REQUESTED and rec.exited, (reason, rec)


def test_xen_l4_entries_cover_m2p_and_hypervisor_slots(machine):
    entries = machine.xen_area.xen_l4_entries()
    assert set(entries) <= set(range(ROOT_PAGETABLE_FIRST_XEN_SLOT, ROOT_PAGETABLE_LAST_XEN_SLOT + 1))
    assert entries[256] & _PAGE_USER                     # M2P: guest-visible
    for slot in set(entries) - {256}:
        assert not entries[slot] & _PAGE_USER            # everything else: supervisor-only


def test_guest_reads_m2p_and_loads_flat_selectors(machine):
    entry, rec, syms = machine.load_kernel(rf"""
main:
    mov ${L.RO_MPT_VIRT_START + GUEST_FIRST_MFN * 8 + 8 * 5:#x}, %rbx
    mov (%rbx), %rdi             /* M2P entry of the guest's pfn 5 */
    mov ${L.FLAT_RING3_DS32:#x}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %ds, %rsi
    mov ${0x13:#x}, %eax         /* the guest's own GDT entry 2, RPL3 */
    mov %eax, %fs
    mov %fs, %rdx
    HYPERCALL HC_LOG
    movq $2, skip_len(%rip)
    mov ${L.RO_MPT_VIRT_START:#x}, %rbx
m2p_write:
    movb %al, (%rbx)             /* read-only for the guest */
    HYPERCALL HC_EXIT
""")
    gdt_mfn = machine.new_table()
    machine.memory.write_u64((gdt_mfn << 12) + 2 * 8, 0x00CFF3000000FFFF)   # flat data, DPL3
    entry.pv.gdt_frames[0], entry.pv.gdt_ents = gdt_mfn, 512
    entry._sync_gdt()
    run(entry, rec)
    assert rec.log[0][:3] == (5, L.FLAT_RING3_DS32, 0x13)
    assert rec.log[1][:3] == (14, 0x3, syms["m2p_write"])


def test_failsafe_callback_on_bad_iret_cs(machine):
    entry, rec, syms = machine.load_kernel(r"""
main:
    pushq $0xe02b                /* ss */
    pushq %rsp                   /* rsp */
    pushq $0x202
    pushq $0x1234                /* a CS Xen would fault on */
    pushq $main
    XEN_IRET
failsafe:                        /* rcx, r11, ds, es, fs, gs, rip, cs, rflags, rsp, ss */
    mov 48(%rsp), %rdi
    mov 56(%rsp), %rsi
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
""")
    from pvhyp.pv.state import Callback
    entry.pv.failsafe_callback = Callback(syms["failsafe"])
    run(entry, rec)
    assert rec.log[0][0] == syms["main"]
    assert rec.log[0][1] & 0xFFFF == 0x1234 & ~3


class RecordingPtwr:
    """Stands in for hv.mmu.ptwr_emulate: records and performs the store."""

    def __init__(self, memory):
        self.memory, self.calls = memory, []

    def __call__(self, entry, addr, data, width, old=None):
        maddr = GUEST_FIRST_MFN * 4096 + addr                       # VA == pfn << 12 in the kit
        if old is not None and int.from_bytes(self.memory.read(maddr, width), "little") != old:
            return 1
        self.calls.append((addr, data, width))
        self.memory.write(maddr, data)
        return 0


def test_writable_pagetable_stores_are_emulated(machine):
    entry, rec, syms = machine.load_kernel(rf"""
main:
    mov ${RO_PAGE_VA}, %rbx
    mov $0x1003, %rax
    mov %rax, (%rbx)                     /* plain store */
    mov $0x2003, %rcx
    xchg %rcx, (%rbx)                    /* rcx <- 0x1003 */
    mov $0x2003, %rax
    mov $0x3003, %rdx
    lock cmpxchg %rdx, (%rbx)            /* equal: stores 0x3003, ZF */
    pushfq
    pop %r8
    lock btsq $9, (%rbx)                 /* sets bit 9, CF = old bit (0) */
    lock andq $-2, (%rbx)                /* clears the present bit */
    lock andb $0xfd, (%rbx)              /* clear_bit(_PAGE_BIT_RW): a byte-wide store */
    mov (%rbx), %rdi
    mov %rcx, %rsi
    mov %r8, %rdx
    HYPERCALL HC_LOG
    HYPERCALL HC_EXIT
""")
    ptwr = RecordingPtwr(machine.memory)
    entry.ptwr_emulate = ptwr
    entry.vcpu.domain.vm_assist |= 1 << 2           # VMASST_TYPE_writable_pagetables
    run(entry, rec)
    final, old_in_rcx, flags, _, _ = rec.log[0]
    assert final == (0x3003 | 1 << 9) & ~1 & ~2
    assert old_in_rcx == 0x1003
    assert flags & FLAG_ZF
    assert [c[1] for c in ptwr.calls] == [struct.pack("<Q", v) for v in
                                          (0x1003, 0x2003, 0x3003, 0x3203, 0x3202)] + [b"\x00"]
    assert all(c[0] == RO_PAGE_VA and c[2] == 8 for c in ptwr.calls[:-1])
    assert ptwr.calls[-1][2] == 1


def test_page_fault_without_writable_pagetables_is_bounced(machine):
    entry, rec, syms = machine.load_kernel(rf"""
main:
    movq $3, skip_len(%rip)
    mov ${RO_PAGE_VA}, %rbx
store:
    mov %rax, (%rbx)
    HYPERCALL HC_EXIT
""")
    entry.ptwr_emulate = RecordingPtwr(machine.memory)
    run(entry, rec)
    assert rec.log[0][:3] == (14, 0x3, syms["store"])
    assert not entry.ptwr_emulate.calls


def test_mov_to_cr3_goes_to_the_mmu(machine):
    entry, rec, syms = machine.load_kernel(r"""
main:
    mov %cr3, %rax
    mov %rax, %cr3               /* accepted by the MMU hook */
    movq $3, skip_len(%rip)
    mov $0x5000, %rax
refused:
    mov %rax, %cr3               /* refused: #GP */
    HYPERCALL HC_EXIT
""")
    seen = []
    entry.priv.on_new_cr3 = lambda mfn: seen.append(mfn) or mfn != 5
    run(entry, rec)
    assert seen == [entry.vcpu.guest_table, 5]
    assert rec.log[0][:3] == (13, 0, syms["refused"])


def test_cpuid_policy_offers_no_serialize_and_the_tsc_frequency():
    """SERIALIZE would be a #UD exit per use (TCG lacks it); leaf 0x16 spares Linux its PIT polling."""
    from pvhyp.pv.emulate import MAX_BASIC_LEAF, cpuid_policy
    assert cpuid_policy(0, 0)[0] == MAX_BASIC_LEAF == 0x16
    assert cpuid_policy(7, 0)[3] & (1 << 14) == 0
    assert cpuid_policy(0x16, 0, tsc_khz=2_000_000) == (2000, 2000, 100, 0)
    assert cpuid_policy(0x16, 0) == (0, 0, 0, 0)          # no clock known: nothing claimed

"""xen/include/public/arch-x86/xen.h: x86 types shared by 32- and 64-bit guests.

On x86-64 this header pulls in xen-x86_64.h (``abi.xen_x86_64``) for the
register layout; the vcpu context, trap table and arch part of shared_info
are defined here.
"""

from construct import Bytes, Padding, Struct

from abi import xen_x86_64
from abi.cdefs import Typedef, uint8_t, uint16_t, uint32_t, uint64_t, unsigned_long

# Guest frame numbers and "machine word" fields are unsigned long.
xen_pfn_t = Typedef("xen_pfn_t", unsigned_long)
xen_ulong_t = Typedef("xen_ulong_t", unsigned_long)

XEN_HAVE_PV_GUEST_ENTRY = 1  # start_info exists on x86
XEN_HAVE_PV_UPCALL_MASK = 1  # vcpu_info.evtchn_upcall_mask exists on x86

# GDT frames from FIRST_RESERVED_GDT_PAGE on belong to Xen (its flat selectors).
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_BYTE = FIRST_RESERVED_GDT_PAGE * 4096
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8

# shared_info holds vcpu_info for this many vcpus; more need VCPUOP_register_vcpu_info.
XEN_LEGACY_MAX_VCPUS = 32

# trap_info.flags: bits 0-1 the DPL allowed to raise the vector with INT n,
# bit 2 "clear the event mask on entry" (an interrupt gate rather than a trap gate).
def TI_GET_DPL(flags: int) -> int:
    return flags & 3


def TI_GET_IF(flags: int) -> int:
    return flags & 4


def TI_SET_DPL(flags: int, dpl: int) -> int:
    return flags | dpl


def TI_SET_IF(flags: int, interrupt_gate: bool) -> int:
    return flags | (int(bool(interrupt_gate)) << 2)


trap_info = Struct(
    "vector" / uint8_t * "IN: exception/interrupt vector",
    "flags" / uint8_t * "IN: DPL in bits 0-1, event masking (IF) in bit 2",
    "cs" / uint16_t * "IN: code selector of the handler",
    Padding(4),
    "address" / unsigned_long * "IN: handler address; 0 terminates the table",
)
trap_info.docs = (
    "HYPERVISOR_set_trap_table: one virtual IDT entry. The guest passes an array "
    "ending with address == 0; Xen bounces exceptions to these handlers."
)

tsc_timestamp_t = Typedef("tsc_timestamp_t", uint64_t)

# vcpu_guest_context.flags
VGCF_I387_VALID = 1 << 0
VGCF_IN_KERNEL = 1 << 2
_VGCF_i387_valid = 0
VGCF_i387_valid = 1 << _VGCF_i387_valid  # fpu_ctxt holds valid state
_VGCF_in_kernel = 2
VGCF_in_kernel = 1 << _VGCF_in_kernel  # the vcpu runs in (guest) kernel mode
_VGCF_failsafe_disables_events = 3
VGCF_failsafe_disables_events = 1 << _VGCF_failsafe_disables_events
_VGCF_syscall_disables_events = 4
VGCF_syscall_disables_events = 1 << _VGCF_syscall_disables_events
_VGCF_online = 5
VGCF_online = 1 << _VGCF_online  # clear: the vcpu starts down (VCPUOP_up brings it up)

vcpu_guest_context = Struct(
    "fpu_ctxt" / Struct("x" / Bytes(512)) * "FXSAVE image",
    "flags" / unsigned_long * "VGCF_*",
    "user_regs" / xen_x86_64.cpu_user_regs,
    "trap_ctxt" / trap_info[256] * "virtual IDT",
    "ldt_base" / unsigned_long,
    "ldt_ents" / unsigned_long,
    "gdt_frames" / unsigned_long[16] * "GDT frames (MFNs), validated as descriptor pages",
    "gdt_ents" / unsigned_long,
    "kernel_ss" / unsigned_long * "stack selector loaded on a switch to kernel mode",
    "kernel_sp" / unsigned_long * "stack pointer loaded on a switch to kernel mode",
    "ctrlreg" / unsigned_long[8] * "cr3 holds xen_pfn_to_cr3(top-level page-table MFN)",
    "debugreg" / unsigned_long[8],
    "event_callback_eip" / unsigned_long,
    "failsafe_callback_eip" / unsigned_long,
    "syscall_callback_eip" / unsigned_long,
    "vm_assist" / unsigned_long * "VMASST_TYPE_* bitmap",
    "fs_base" / uint64_t,
    "gs_base_kernel" / uint64_t,
    "gs_base_user" / uint64_t,
)
vcpu_guest_context.docs = (
    "Complete vcpu state: IN to XEN_DOMCTL_setvcpucontext and VCPUOP_initialise, "
    "OUT from XEN_DOMCTL_getvcpucontext."
)

arch_shared_info = Struct(
    "max_pfn" / unsigned_long * "valid entries in the guest's p2m table",
    "pfn_to_mfn_frame_list_list" / xen_pfn_t
    * "MFN of the top of the 3-level p2m frame tree (for save/restore tools); ~0 if unusable",
    "nmi_reason" / unsigned_long,
    "p2m_cr3" / unsigned_long * "cr3 of the address space where p2m_vaddr is valid (0: unused)",
    "p2m_vaddr" / unsigned_long * "virtual address of the linear p2m list",
    "p2m_generation" / unsigned_long * "odd while the guest updates the p2m mapping",
)
arch_shared_info.docs = "x86 part of shared_info, written by the guest for the toolstack."

# struct xen_arch_domainconfig (tools only): emulation_flags bits.
_XEN_X86_EMU_LAPIC = 0
XEN_X86_EMU_LAPIC = 1 << _XEN_X86_EMU_LAPIC
_XEN_X86_EMU_HPET = 1
XEN_X86_EMU_HPET = 1 << _XEN_X86_EMU_HPET
_XEN_X86_EMU_PM = 2
XEN_X86_EMU_PM = 1 << _XEN_X86_EMU_PM
_XEN_X86_EMU_RTC = 3
XEN_X86_EMU_RTC = 1 << _XEN_X86_EMU_RTC
_XEN_X86_EMU_IOAPIC = 4
XEN_X86_EMU_IOAPIC = 1 << _XEN_X86_EMU_IOAPIC
_XEN_X86_EMU_PIC = 5
XEN_X86_EMU_PIC = 1 << _XEN_X86_EMU_PIC
_XEN_X86_EMU_VGA = 6
XEN_X86_EMU_VGA = 1 << _XEN_X86_EMU_VGA
_XEN_X86_EMU_IOMMU = 7
XEN_X86_EMU_IOMMU = 1 << _XEN_X86_EMU_IOMMU
_XEN_X86_EMU_PIT = 8
XEN_X86_EMU_PIT = 1 << _XEN_X86_EMU_PIT
_XEN_X86_EMU_USE_PIRQ = 9
XEN_X86_EMU_USE_PIRQ = 1 << _XEN_X86_EMU_USE_PIRQ
_XEN_X86_EMU_VPCI = 10
XEN_X86_EMU_VPCI = 1 << _XEN_X86_EMU_VPCI
XEN_X86_EMU_ALL = (
    XEN_X86_EMU_LAPIC | XEN_X86_EMU_HPET | XEN_X86_EMU_PM | XEN_X86_EMU_RTC
    | XEN_X86_EMU_IOAPIC | XEN_X86_EMU_PIC | XEN_X86_EMU_VGA | XEN_X86_EMU_IOMMU
    | XEN_X86_EMU_PIT | XEN_X86_EMU_USE_PIRQ | XEN_X86_EMU_VPCI
)
XEN_X86_MSR_RELAXED = 1 << 0
XEN_X86_MISC_FLAGS_MAX = XEN_X86_MSR_RELAXED

xen_arch_domainconfig = Struct(
    "emulation_flags" / uint32_t * "IN: XEN_X86_EMU_*; a PV guest passes 0 (nothing emulated)",
    "misc_flags" / uint32_t * "IN: XEN_X86_MSR_RELAXED",
)
xen_arch_domainconfig.docs = "Arch part of XEN_DOMCTL_createdomain's configuration (tools only)."

XEN_CPUID_NO_SUBLEAF = 0xFFFFFFFF
xen_cpuid_leaf = Struct(
    "leaf" / uint32_t,
    "subleaf" / uint32_t * "XEN_CPUID_NO_SUBLEAF if the leaf has none",
    "a" / uint32_t,
    "b" / uint32_t,
    "c" / uint32_t,
    "d" / uint32_t,
)
xen_cpuid_leaf.docs = "One CPUID leaf of a domain's policy (tools)."

xen_msr_entry = Struct(
    "idx" / uint32_t,
    "flags" / uint32_t * "reserved, 0",
    "val" / uint64_t,
)
xen_msr_entry.docs = "One MSR of a domain's policy (tools)."

XEN_HVM_DEBUGCONS_IOPORT = 0xE9

"""xen/include/public/arch-x86/xen-x86_64.h: the 64-bit PV guest's machine view.

A 64-bit PV kernel runs in ring 3 (Xen owns ring 0), so "kernel" and "user"
selectors are the same flat ring-3 descriptors Xen places in its reserved
GDT entries; the guest tells kernel from user mode by which page table is
loaded (``VGCF_in_kernel``), not by CPL.

Xen's register layout ``cpu_user_regs`` declares every register as a union
of its 64/32/16/8-bit names; here each register is its 64-bit name only
(``rax``, ``r8``, ``rflags``), which is where all those aliases start.
"""

from construct import Struct

from abi.cdefs import Typedef, uint8_t, uint16_t, uint32_t, uint64_t, unsigned_long

# --- flat segment selectors Xen provides in its reserved GDT ------------------
FLAT_RING3_CS32 = 0xE023  # compatibility-mode code
FLAT_RING3_CS64 = 0xE033  # long-mode code
FLAT_RING3_DS32 = 0xE02B
FLAT_RING3_DS64 = 0x0000  # null selector: 64-bit data needs no descriptor
FLAT_RING3_SS32 = 0xE02B
FLAT_RING3_SS64 = 0xE02B

FLAT_KERNEL_DS64 = FLAT_RING3_DS64
FLAT_KERNEL_DS32 = FLAT_RING3_DS32
FLAT_KERNEL_DS = FLAT_KERNEL_DS64
FLAT_KERNEL_CS64 = FLAT_RING3_CS64
FLAT_KERNEL_CS32 = FLAT_RING3_CS32
FLAT_KERNEL_CS = FLAT_KERNEL_CS64
FLAT_KERNEL_SS64 = FLAT_RING3_SS64
FLAT_KERNEL_SS32 = FLAT_RING3_SS32
FLAT_KERNEL_SS = FLAT_KERNEL_SS64

FLAT_USER_DS64 = FLAT_RING3_DS64
FLAT_USER_DS32 = FLAT_RING3_DS32
FLAT_USER_DS = FLAT_USER_DS64
FLAT_USER_CS64 = FLAT_RING3_CS64
FLAT_USER_CS32 = FLAT_RING3_CS32
FLAT_USER_CS = FLAT_USER_CS64
FLAT_USER_SS64 = FLAT_RING3_SS64
FLAT_USER_SS32 = FLAT_RING3_SS32
FLAT_USER_SS = FLAT_USER_SS64

# --- the hole Xen reserves at the bottom of the upper canonical half ----------
# A PV guest may not map anything in [HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END);
# Xen's read-only machine-to-phys table (M2P) is mapped at its start.
__HYPERVISOR_VIRT_START = 0xFFFF800000000000
__HYPERVISOR_VIRT_END = 0xFFFF880000000000
__MACH2PHYS_VIRT_START = 0xFFFF800000000000
__MACH2PHYS_VIRT_END = 0xFFFF804000000000
HYPERVISOR_VIRT_START = __HYPERVISOR_VIRT_START
HYPERVISOR_VIRT_END = __HYPERVISOR_VIRT_END
MACH2PHYS_VIRT_START = __MACH2PHYS_VIRT_START
MACH2PHYS_VIRT_END = __MACH2PHYS_VIRT_END
MACH2PHYS_NR_ENTRIES = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3  # 8-byte entries
# What an M2P entry holds for a machine frame no guest frame maps to (Xen's
# asm/mm.h, not a public header; guests read it in the read-only M2P above).
INVALID_M2P_ENTRY = 0xFFFF_FFFF_FFFF_FFFF

# For the registry: what here has no twin in xen-x86_64.h, and why.
NOT_IN_HEADER = {
    "INVALID_M2P_ENTRY": "Xen's asm/mm.h value of an unused M2P entry (~0UL), which guests see in the M2P",
}

# --- HYPERVISOR_set_segment_base: which base to set --------------------------
SEGBASE_FS = 0
SEGBASE_GS_USER = 1
SEGBASE_GS_KERNEL = 2
SEGBASE_GS_USER_SEL = 3  # load the user GS selector (value) while keeping the kernel GS base

# vcpu_guest_context.flags bit, 64-bit only: the guest entered via SYSCALL,
# so the iret hypercall must return with SYSRET semantics (rcx/r11 clobbered).
_VGCF_in_syscall = 8
VGCF_in_syscall = 1 << _VGCF_in_syscall
VGCF_IN_SYSCALL = VGCF_in_syscall

# HYPERVISOR_iret: the guest pushes this frame on its kernel stack and Xen
# pops it (lowest address first).  With VGCF_in_syscall in `flags`, rcx and
# r11 are not restored (SYSRET-style return).
iret_context = Struct(
    "rax" / uint64_t,  # restored: the hypercall clobbered it
    "r11" / uint64_t,
    "rcx" / uint64_t,
    "flags" / uint64_t,  # VGCF_in_syscall or 0
    "rip" / uint64_t,
    "cs" / uint64_t,
    "rflags" / uint64_t,
    "rsp" / uint64_t,
    "ss" / uint64_t,
)
iret_context.docs = "Frame popped by HYPERVISOR_iret from the guest kernel stack (IN)."

cpu_user_regs = Struct(
    "r15" / uint64_t,
    "r14" / uint64_t,
    "r13" / uint64_t,
    "r12" / uint64_t,
    "rbp" / uint64_t,
    "rbx" / uint64_t,
    "r11" / uint64_t,
    "r10" / uint64_t,
    "r9" / uint64_t,
    "r8" / uint64_t,
    "rax" / uint64_t,
    "rcx" / uint64_t,
    "rdx" / uint64_t,
    "rsi" / uint64_t,
    "rdi" / uint64_t,
    "error_code" / uint32_t * "private to Xen: the exception error code",
    "entry_vector" / uint32_t * "private to Xen: which vector entered",
    "rip" / uint64_t,
    "cs" / uint16_t,
    "_pad0" / uint16_t[1],
    "saved_upcall_mask" / uint8_t * "the vcpu's evtchn_upcall_mask at entry, restored on iret",
    "_pad1" / uint8_t[3],
    "rflags" / uint64_t * "IF is virtualised through evtchn_upcall_mask",
    "rsp" / uint64_t,
    "ss" / uint16_t,
    "_pad2" / uint16_t[3],
    "es" / uint16_t,
    "_pad3" / uint16_t[3],
    "ds" / uint16_t,
    "_pad4" / uint16_t[3],
    "fs" / uint16_t,
    "_pad5" / uint16_t[3],
    "gs" / uint16_t,
    "_pad6" / uint16_t[3],
)
cpu_user_regs.docs = "A vcpu's general-purpose register state, as saved on entry to Xen."

arch_vcpu_info = Struct(
    "cr2" / unsigned_long * "OUT: faulting address of the last page fault Xen bounced to the guest",
    "pad" / unsigned_long,
)
arch_vcpu_info.docs = "x86 part of vcpu_info (in shared_info or a registered vcpu_info page)."

# Callback addresses (event, failsafe, syscall, NMI) are plain virtual addresses.
xen_callback_t = Typedef("xen_callback_t", unsigned_long)

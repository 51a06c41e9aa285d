"""xen/include/public/xen.h: hypercall numbers and the core guest interface.

A PV guest makes hypercall N by calling into the hypercall page at offset
N * 32, arguments in rdi, rsi, rdx, r10, r8 (r9), result in rax (negative
Xen errno on failure, see ``abi.errno``).

``HYPERCALL_NUMBERS`` / ``HYPERCALL_NAMES`` give the numbers by short name
('mmu_update' -> 1), since ``__HYPERVISOR_*`` names are mangled when written
inside a Python class body.
"""

from construct import Bytes, Padding, Struct

from abi import arch_x86_xen, xen_x86_64
from abi.cdefs import (
    XEN_GUEST_HANDLE_64,
    CUnion,
    Typedef,
    int8_t,
    uint8_t,
    uint16_t,
    uint32_t,
    uint64_t,
    unsigned_int,
    unsigned_long,
)

xen_pfn_t = arch_x86_xen.xen_pfn_t
xen_ulong_t = arch_x86_xen.xen_ulong_t

# --- hypercall numbers --------------------------------------------------------
__HYPERVISOR_set_trap_table = 0
__HYPERVISOR_mmu_update = 1
__HYPERVISOR_set_gdt = 2
__HYPERVISOR_stack_switch = 3
__HYPERVISOR_set_callbacks = 4
__HYPERVISOR_fpu_taskswitch = 5
__HYPERVISOR_sched_op_compat = 6  # pre-3.0.2 form of sched_op
__HYPERVISOR_platform_op = 7
__HYPERVISOR_set_debugreg = 8
__HYPERVISOR_get_debugreg = 9
__HYPERVISOR_update_descriptor = 10
__HYPERVISOR_memory_op = 12
__HYPERVISOR_multicall = 13
__HYPERVISOR_update_va_mapping = 14
__HYPERVISOR_set_timer_op = 15
__HYPERVISOR_event_channel_op_compat = 16  # pre-3.2 form of event_channel_op
__HYPERVISOR_xen_version = 17
__HYPERVISOR_console_io = 18
__HYPERVISOR_physdev_op_compat = 19  # pre-3.2 form of physdev_op
__HYPERVISOR_grant_table_op = 20
__HYPERVISOR_vm_assist = 21
__HYPERVISOR_update_va_mapping_otherdomain = 22
__HYPERVISOR_iret = 23  # x86 PV only
__HYPERVISOR_vcpu_op = 24
__HYPERVISOR_set_segment_base = 25  # x86-64 PV only
__HYPERVISOR_mmuext_op = 26
__HYPERVISOR_xsm_op = 27
__HYPERVISOR_nmi_op = 28
__HYPERVISOR_sched_op = 29
__HYPERVISOR_callback_op = 30
__HYPERVISOR_xenoprof_op = 31
__HYPERVISOR_event_channel_op = 32
__HYPERVISOR_physdev_op = 33
__HYPERVISOR_hvm_op = 34
__HYPERVISOR_sysctl = 35
__HYPERVISOR_domctl = 36
__HYPERVISOR_kexec_op = 37
__HYPERVISOR_tmem_op = 38
__HYPERVISOR_argo_op = 39
__HYPERVISOR_xenpmu_op = 40
__HYPERVISOR_dm_op = 41
__HYPERVISOR_hypfs_op = 42
# Reserved for architecture-specific hypercalls (x86: arch_0 is mca).
__HYPERVISOR_arch_0 = 48
__HYPERVISOR_arch_1 = 49
__HYPERVISOR_arch_2 = 50
__HYPERVISOR_arch_3 = 51
__HYPERVISOR_arch_4 = 52
__HYPERVISOR_arch_5 = 53
__HYPERVISOR_arch_6 = 54
__HYPERVISOR_arch_7 = 55

_PREFIX = "__HYPERVISOR_"
HYPERCALL_NUMBERS: dict[str, int] = {
    name[len(_PREFIX):]: value for name, value in globals().items() if name.startswith(_PREFIX)
}
HYPERCALL_NAMES: dict[int, str] = {value: name for name, value in HYPERCALL_NUMBERS.items()}
del _PREFIX

# --- virtual interrupts (bind with EVTCHNOP_bind_virq) ---------------------------
# Global VIRQs are bound once per domain (on vcpu 0); per-vcpu ones per vcpu.
VIRQ_TIMER = 0  # per-vcpu: the singleshot/periodic timer fired
VIRQ_DEBUG = 1  # per-vcpu: debug key pressed
VIRQ_CONSOLE = 2  # global: bytes arrived on the emergency console (dom0)
VIRQ_DOM_EXC = 3  # global: a domain died or crashed (dom0)
VIRQ_TBUF = 4  # global: trace buffers have data
VIRQ_DEBUGGER = 6  # global: a domain paused for a debugger
VIRQ_XENOPROF = 7  # per-vcpu
VIRQ_CON_RING = 8  # global: Xen's console ring has new bytes
VIRQ_PCPU_STATE = 9  # global: a physical CPU went on/offline
VIRQ_MEM_EVENT = 10  # global
VIRQ_ARGO = 11  # global
VIRQ_ENOMEM = 12  # global: Xen is low on memory
VIRQ_XENPMU = 13  # per-vcpu
VIRQ_ARCH_0 = 16
VIRQ_ARCH_1 = 17
VIRQ_ARCH_2 = 18
VIRQ_ARCH_3 = 19
VIRQ_ARCH_4 = 20
VIRQ_ARCH_5 = 21
VIRQ_ARCH_6 = 22
VIRQ_ARCH_7 = 23
NR_VIRQS = 24

# --- HYPERVISOR_mmu_update ----------------------------------------------------
# The command is the low 2 bits of mmu_update.ptr (entries are 8-byte aligned).
MMU_NORMAL_PT_UPDATE = 0  # ptr: machine address of a PTE; val: its new contents (validated)
MMU_MACHPHYS_UPDATE = 1  # ptr: MFN << PAGE_SHIFT; val: the PFN to record in the M2P
MMU_PT_UPDATE_PRESERVE_AD = 2  # like NORMAL, keeping the current accessed/dirty bits
MMU_PT_UPDATE_NO_TRANSLATE = 3  # like NORMAL; ptr is a machine address even for translated guests
# A continued mmu_update / mmuext_op carries this bit in its count (Xen's mm.c);
# a guest may pass it too, so its meaning is part of the call.
MMU_UPDATE_PREEMPTED = 1 << 31

# For the registry: what here has no twin in xen.h, and why.
NOT_IN_HEADER = {
    "MMU_UPDATE_PREEMPTED": "Xen's mm.c continuation bit in an mmu_update/mmuext_op count, not in xen.h",
}

mmu_update = Struct(
    "ptr" / uint64_t * "IN: machine address of the entry | MMU_* command in bits 0-1",
    "val" / uint64_t * "IN: new entry value",
)
mmu_update.docs = (
    "HYPERVISOR_mmu_update(reqs, count, success_count, foreign_domid): a batch of "
    "page-table or M2P writes, each validated against the page's type. Stops at the "
    "first failure; success_count (OUT) says how many were done."
)

# --- HYPERVISOR_mmuext_op -------------------------------------------------------
MMUEXT_PIN_L1_TABLE = 0  # arg1.mfn: validate as an L1 table and keep it typed
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4  # arg1.mfn
MMUEXT_NEW_BASEPTR = 5  # arg1.mfn: switch the kernel-mode page table (an L4) to this frame
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7  # arg1.linear_addr
MMUEXT_TLB_FLUSH_MULTI = 8  # arg2.vcpumask
MMUEXT_INVLPG_MULTI = 9  # arg1.linear_addr, arg2.vcpumask
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11  # arg1.linear_addr
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13  # arg1.linear_addr, arg2.nr_ents
MMUEXT_NEW_USER_BASEPTR = 15  # arg1.mfn: the page table used in guest user mode (x86-64)
MMUEXT_CLEAR_PAGE = 16  # arg1.mfn
MMUEXT_COPY_PAGE = 17  # arg1.mfn (destination), arg2.src_mfn
MMUEXT_FLUSH_CACHE_GLOBAL = 18
MMUEXT_MARK_SUPER = 19  # arg1.mfn
MMUEXT_UNMARK_SUPER = 20  # arg1.mfn

mmuext_op = Struct(
    "cmd" / unsigned_int * "IN: MMUEXT_*",
    Padding(4),
    "arg1" / CUnion(
        "mfn" / xen_pfn_t,
        "linear_addr" / unsigned_long,
    ) * "IN: frame or virtual address, per cmd",
    "arg2" / CUnion(
        "nr_ents" / unsigned_int,
        "vcpumask" / Typedef("XEN_GUEST_HANDLE(const_void)", uint64_t),
        "src_mfn" / xen_pfn_t,
    ) * "IN: LDT size, vcpu bitmap pointer, or source frame, per cmd",
)
mmuext_op.docs = (
    "HYPERVISOR_mmuext_op(ops, count, success_count, domid): pin/unpin page "
    "tables, switch base pointers, flush TLBs, set the LDT."
)

# --- HYPERVISOR_update_va_mapping flags -------------------------------------------
UVMF_NONE = 0 << 0  # no flush
UVMF_TLB_FLUSH = 1 << 0  # flush the whole TLB
UVMF_INVLPG = 2 << 0  # flush only this address
UVMF_FLUSHTYPE_MASK = 3 << 0
UVMF_MULTI = 0 << 2  # flush on the vcpus in the bitmap the flags point at
UVMF_LOCAL = 0 << 2  # flush on this vcpu only
UVMF_ALL = 1 << 2  # flush on all vcpus

# --- HYPERVISOR_console_io ------------------------------------------------------------
CONSOLEIO_write = 0  # (count, buffer): write to Xen's console
CONSOLEIO_read = 1  # (count, buffer): read from it (dom0)

# --- HYPERVISOR_vm_assist ---------------------------------------------------------
VMASST_CMD_enable = 0
VMASST_CMD_disable = 1
VMASST_TYPE_4gb_segments = 0
VMASST_TYPE_4gb_segments_notify = 1
VMASST_TYPE_writable_pagetables = 2  # trap and emulate direct writes to L1 tables
VMASST_TYPE_pae_extended_cr3 = 3
VMASST_TYPE_architectural_iopl = 4
VMASST_TYPE_runstate_update_flag = 5  # XEN_RUNSTATE_UPDATE in state_entry_time
VMASST_TYPE_m2p_strict = 32

# --- domain ids ---------------------------------------------------------------------
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0  # the calling domain
DOMID_IO = 0x7FF1  # owner of I/O memory
DOMID_XEN = 0x7FF2  # owner of Xen's own pages shared with guests
DOMID_COW = 0x7FF3  # owner of shared copy-on-write pages
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF
DOMID_MASK = 0x7FFF

domid_t = Typedef("domid_t", uint16_t)

# --- HYPERVISOR_multicall ------------------------------------------------------------
multicall_entry = Struct(
    "op" / xen_ulong_t * "IN: hypercall number",
    "result" / xen_ulong_t * "OUT: its return value",
    "args" / xen_ulong_t[6] * "IN: its arguments",
)
multicall_entry.docs = (
    "HYPERVISOR_multicall(calls, nr_calls): run several hypercalls in one trap; "
    "each result is written back into its entry."
)

# --- time ---------------------------------------------------------------------------
XEN_PVCLOCK_TSC_STABLE_BIT = 1 << 0
XEN_PVCLOCK_GUEST_STOPPED = 1 << 1

vcpu_time_info = Struct(
    "version" / uint32_t * "OUT: odd while Xen updates the record (a seqlock)",
    "pad0" / uint32_t,
    "tsc_timestamp" / uint64_t * "OUT: TSC when system_time was sampled",
    "system_time" / uint64_t * "OUT: ns since boot at tsc_timestamp",
    "tsc_to_system_mul" / uint32_t * "OUT: ns = ((tsc delta << tsc_shift) * mul) >> 32",
    "tsc_shift" / int8_t,
    "flags" / uint8_t * "OUT: XEN_PVCLOCK_*",
    "pad1" / uint8_t[2],
)
vcpu_time_info.docs = "Per-vcpu clock parameters Xen publishes (pvclock)."

vcpu_info = Struct(
    "evtchn_upcall_pending" / uint8_t * "set by Xen when an event is pending; cleared by the guest",
    "evtchn_upcall_mask" / uint8_t * "guest's virtual interrupt flag: nonzero blocks upcalls",
    Padding(6),
    "evtchn_pending_sel" / xen_ulong_t * "which words of evtchn_pending to scan",
    "arch" / xen_x86_64.arch_vcpu_info,
    "time" / vcpu_time_info,
)
vcpu_info.docs = "Per-vcpu event and time state, in shared_info or a registered page."

shared_info = Struct(
    "vcpu_info" / vcpu_info[arch_x86_xen.XEN_LEGACY_MAX_VCPUS],
    "evtchn_pending" / xen_ulong_t[64] * "one bit per port: set by Xen, cleared by the guest",
    "evtchn_mask" / xen_ulong_t[64] * "one bit per port: set/cleared by the guest only",
    "wc_version" / uint32_t * "odd while the wallclock is updated",
    "wc_sec" / uint32_t * "wallclock at system time 0 (Unix epoch based)",
    "wc_nsec" / uint32_t,
    "wc_sec_hi" / uint32_t,
    "arch" / arch_x86_xen.arch_shared_info,
)
shared_info.docs = "The page Xen shares with every domain (start_info.shared_info)."

# --- start of day -----------------------------------------------------------------
MAX_GUEST_CMDLINE = 1024

start_info = Struct(
    "magic" / Bytes(32) * 'OUT: "xen-<version>-<platform>", NUL padded',
    "nr_pages" / unsigned_long * "OUT: pages allocated to the domain",
    "shared_info" / unsigned_long * "OUT: machine address of shared_info",
    "flags" / uint32_t * "OUT: SIF_*",
    Padding(4),
    "store_mfn" / xen_pfn_t * "OUT: xenstore ring frame",
    "store_evtchn" / uint32_t * "OUT: xenstore event channel",
    Padding(4),
    "console" / CUnion(
        "domU" / Struct(
            "mfn" / xen_pfn_t * "console ring frame",
            "evtchn" / uint32_t * "console event channel",
            Padding(4),
        ),
        "dom0" / Struct(
            "info_off" / uint32_t * "offset of dom0_vga_console_info in this page",
            "info_size" / uint32_t,
        ),
    ),
    "pt_base" / unsigned_long * "OUT: virtual address of the boot page tables' top level",
    "nr_pt_frames" / unsigned_long * "OUT: number of boot page-table frames",
    "mfn_list" / unsigned_long * "OUT: virtual address of the p2m array",
    "mod_start" / unsigned_long * "OUT: virtual address (PFN if SIF_MOD_START_PFN) of the initrd",
    "mod_len" / unsigned_long * "OUT: initrd size in bytes",
    "cmd_line" / Bytes(MAX_GUEST_CMDLINE) * "OUT: kernel command line, NUL terminated",
    "first_p2m_pfn" / unsigned_long * "OUT: first PFN of the initial p2m frames",
    "nr_p2m_frames" / unsigned_long,
)
start_info.docs = (
    "Written by the domain builder; rsi points at it when the guest starts. "
    "The fields up to console are refreshed on resume."
)

SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1
SIF_MULTIBOOT_MOD = 1 << 2  # mod_start is a multiboot module list
SIF_MOD_START_PFN = 1 << 3
SIF_VIRT_P2M_4TOOLS = 1 << 4
SIF_PM_MASK = 0xFF << 8

xen_multiboot_mod_list = Struct(
    "mod_start" / uint32_t * "offset of the module from the multiboot package start",
    "mod_end" / uint32_t,
    "cmdline" / uint32_t * "offset of its NUL-terminated command line",
    "pad" / uint32_t,
)
xen_multiboot_mod_list.docs = "A module descriptor when SIF_MULTIBOOT_MOD is set; mod_start == 0 ends the list."

XEN_VGATYPE_TEXT_MODE_3 = 0x03
XEN_VGATYPE_VESA_LFB = 0x23
XEN_VGATYPE_EFI_LFB = 0x70

dom0_vga_console_info = Struct(
    "video_type" / uint8_t * "XEN_VGATYPE_*",
    Padding(3),
    "u" / CUnion(
        "text_mode_3" / Struct(
            "font_height" / uint16_t,
            "cursor_x" / uint16_t,
            "cursor_y" / uint16_t,
            "rows" / uint16_t,
            "columns" / uint16_t,
        ),
        "vesa_lfb" / Struct(
            "width" / uint16_t,
            "height" / uint16_t,
            "bytes_per_line" / uint16_t,
            "bits_per_pixel" / uint16_t,
            "lfb_base" / uint32_t,
            "lfb_size" / uint32_t,
            "red_pos" / uint8_t,
            "red_size" / uint8_t,
            "green_pos" / uint8_t,
            "green_size" / uint8_t,
            "blue_pos" / uint8_t,
            "blue_size" / uint8_t,
            "rsvd_pos" / uint8_t,
            "rsvd_size" / uint8_t,
            "gbl_caps" / uint32_t,
            "mode_attrs" / uint16_t,
            "pad" / uint16_t,
            "ext_lfb_base" / uint32_t,
        ),
    ),
)
dom0_vga_console_info.docs = "dom0's boot console, found via start_info.console.dom0."

xen_domain_handle_t = Typedef("xen_domain_handle_t", Bytes(16))  # the domain's UUID

xen_uuid_t = Struct("a" / uint8_t[16])
xen_uuid_t.docs = "A UUID as 16 bytes, most significant first."

xenctl_bitmap = Struct(
    "bitmap" / XEN_GUEST_HANDLE_64("uint8") * "IN/OUT: the bits, LSB of byte 0 first",
    "nr_bits" / uint32_t * "IN: size of the bitmap in bits",
    Padding(4),
)
xenctl_bitmap.docs = "A variable-length bitmap (cpumaps) passed to domctl/sysctl (tools only)."

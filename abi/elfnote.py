"""xen/include/public/elfnote.h: the "Xen" ELF notes a PV kernel image carries.

The domain builder reads these (note name "Xen") to learn where to enter the
kernel, where to put the hypercall page, the virtual base, and which
XENFEAT_* features the kernel needs or supports.
"""

XEN_ELFNOTE_INFO = 0  # (unused) legacy
XEN_ELFNOTE_ENTRY = 1  # virtual address of the entry point
XEN_ELFNOTE_HYPERCALL_PAGE = 2  # virtual address to fill with hypercall stubs
XEN_ELFNOTE_VIRT_BASE = 3  # virtual address the image's physical 0 maps to
XEN_ELFNOTE_PADDR_OFFSET = 4  # subtracted from ELF physical addresses
XEN_ELFNOTE_XEN_VERSION = 5  # string: "xen-3.0"
XEN_ELFNOTE_GUEST_OS = 6  # string: "linux"
XEN_ELFNOTE_GUEST_VERSION = 7  # string
XEN_ELFNOTE_LOADER = 8  # string: "generic"
XEN_ELFNOTE_PAE_MODE = 9  # string: "yes", "no", "bimodal"
XEN_ELFNOTE_FEATURES = 10  # string: "feat|feat|!feat" (! = required)
XEN_ELFNOTE_BSD_SYMTAB = 11  # string "yes": load the symbol table
XEN_ELFNOTE_HV_START_LOW = 12  # 32-bit PAE: lowest hypervisor address the guest accepts
XEN_ELFNOTE_L1_MFN_VALID = 13  # (mask, value) pairs marking valid L1 entries
XEN_ELFNOTE_SUSPEND_CANCEL = 14  # the kernel copes with a cancelled suspend
XEN_ELFNOTE_INIT_P2M = 15  # virtual address for the initial p2m list (~0: none mapped)
XEN_ELFNOTE_MOD_START_PFN = 16  # the kernel accepts mod_start as a PFN
XEN_ELFNOTE_SUPPORTED_FEATURES = 17  # 32-bit XENFEAT_* bitmap(s) the kernel supports
XEN_ELFNOTE_PHYS32_ENTRY = 18  # 32-bit physical entry point (PVH)
XEN_ELFNOTE_MAX = XEN_ELFNOTE_PHYS32_ENTRY

# Notes in crash dumps and core files rather than kernel images.
XEN_ELFNOTE_CRASH_INFO = 0x1000001
XEN_ELFNOTE_CRASH_REGS = 0x1000002
XEN_ELFNOTE_DUMPCORE_NONE = 0x2000000
XEN_ELFNOTE_DUMPCORE_HEADER = 0x2000001
XEN_ELFNOTE_DUMPCORE_XEN_VERSION = 0x2000002
XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION = 0x2000003

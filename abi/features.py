"""xen/include/public/features.h: XENFEAT_* bits, read with XENVER_get_features.

Feature n is bit (n % 32) of submap n // 32.  A 64-bit PV guest on pvhyp
sees the bits of a classic PV host: writable_page_tables is *not* offered
(page tables are read-only and written by hypercall or trapped writes).
"""

XENFEAT_writable_page_tables = 0  # the guest may write its page tables directly
XENFEAT_writable_descriptor_tables = 1  # ... and its GDT/LDT
XENFEAT_auto_translated_physmap = 2  # the guest sees PFNs, Xen translates (HVM/PVH)
XENFEAT_supervisor_mode_kernel = 3  # the kernel runs in ring 0
XENFEAT_pae_pgdir_above_4gb = 4  # 32-bit PAE: L3 tables may live above 4 GiB
XENFEAT_mmu_pt_update_preserve_ad = 5  # MMU_PT_UPDATE_PRESERVE_AD is available
XENFEAT_highmem_assist = 6  # MMUEXT_CLEAR_PAGE / MMUEXT_COPY_PAGE are available
XENFEAT_gnttab_map_avail_bits = 7  # GNTMAP_guest_avail_mask bits are honoured
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_hvm_pirqs = 10
XENFEAT_dom0 = 11  # this is the control domain
# 12 was grant_map_identity: withdrawn (the header keeps it commented out).
XENFEAT_memory_op_vnode_supported = 13  # XENMEM_get_vnumainfo is available
XENFEAT_ARM_SMCCC_supported = 14
XENFEAT_linux_rsdp_unrestricted = 15
XENFEAT_not_direct_mapped = 16  # Arm
XENFEAT_direct_mapped = 17  # Arm

XENFEAT_NR_SUBMAPS = 1  # number of 32-bit submaps defined

"""xen/include/public/physdev.h: HYPERVISOR_physdev_op(cmd, arg).

Physical devices and interrupts: I/O privilege, PIRQ end-of-interrupt and
mapping, PCI device registration (dom0).  A PV kernel uses set_iopl early
on, even without devices; pvhyp emulates only what that needs.
"""

from construct import Padding, Struct

from abi import arch_x86_xen, xen
from abi.cdefs import XEN_GUEST_HANDLE, CUnion, signed_int, uint8_t, uint16_t, uint32_t, uint64_t, unsigned_long

PHYSDEVOP_eoi = 12
physdev_eoi = Struct(
    "irq" / uint32_t * "IN: the PIRQ to acknowledge",
)
physdev_eoi.docs = "PHYSDEVOP_eoi: end of interrupt for a PIRQ the guest handled."

PHYSDEVOP_pirq_eoi_gmfn_v1 = 17
PHYSDEVOP_pirq_eoi_gmfn_v2 = 28
PHYSDEVOP_pirq_eoi_gmfn = PHYSDEVOP_pirq_eoi_gmfn_v2
physdev_pirq_eoi_gmfn = Struct(
    "gmfn" / arch_x86_xen.xen_pfn_t * "IN: frame of a bitmap, one bit per PIRQ needing EOI",
)
physdev_pirq_eoi_gmfn.docs = (
    "PHYSDEVOP_pirq_eoi_gmfn_v2: share a 'needs EOI' bitmap so the guest skips "
    "PHYSDEVOP_eoi when a bit is clear (v2 also stops Xen auto-unmasking)."
)

PHYSDEVOP_irq_status_query = 5
physdev_irq_status_query = Struct(
    "irq" / uint32_t * "IN",
    "flags" / uint32_t * "OUT: XENIRQSTAT_*",
)
physdev_irq_status_query.docs = "PHYSDEVOP_irq_status_query: does this PIRQ need an EOI, is it shared."

_XENIRQSTAT_needs_eoi = 0
XENIRQSTAT_needs_eoi = 1 << _XENIRQSTAT_needs_eoi
_XENIRQSTAT_shared = 1
XENIRQSTAT_shared = 1 << _XENIRQSTAT_shared

PHYSDEVOP_set_iopl = 6
physdev_set_iopl = Struct(
    "iopl" / uint32_t * "IN: 0-3; the virtual IOPL the guest kernel runs with",
)
physdev_set_iopl.docs = "PHYSDEVOP_set_iopl: which (virtual) rings may use IN/OUT directly."

PHYSDEVOP_set_iobitmap = 7
physdev_set_iobitmap = Struct(
    "bitmap" / XEN_GUEST_HANDLE("uint8") * "IN: I/O permission bitmap (1 = denied, as in a TSS)",
    "nr_ports" / uint32_t * "IN: ports it covers",
    Padding(4),
)
physdev_set_iobitmap.docs = "PHYSDEVOP_set_iobitmap: per-port I/O permission for the guest."

PHYSDEVOP_apic_read = 8
PHYSDEVOP_apic_write = 9
physdev_apic = Struct(
    "apic_physbase" / unsigned_long * "IN: IO-APIC base address",
    "reg" / uint32_t * "IN: register",
    "value" / uint32_t * "IN (write) / OUT (read)",
)
physdev_apic.docs = "PHYSDEVOP_apic_{read,write}: IO-APIC register access (dom0)."

PHYSDEVOP_alloc_irq_vector = 10
PHYSDEVOP_free_irq_vector = 11
physdev_irq = Struct(
    "irq" / uint32_t * "IN",
    "vector" / uint32_t * "OUT (alloc) / IN (free)",
)
physdev_irq.docs = "PHYSDEVOP_{alloc,free}_irq_vector (dom0)."

MAP_PIRQ_TYPE_MSI = 0x0
MAP_PIRQ_TYPE_GSI = 0x1
MAP_PIRQ_TYPE_UNKNOWN = 0x2
MAP_PIRQ_TYPE_MSI_SEG = 0x3
MAP_PIRQ_TYPE_MULTI_MSI = 0x4

PHYSDEVOP_map_pirq = 13
physdev_map_pirq = Struct(
    "domid" / xen.domid_t * "IN",
    Padding(2),
    "type" / signed_int * "IN: MAP_PIRQ_TYPE_*",
    "index" / signed_int * "IN: GSI or MSI index",
    "pirq" / signed_int * "IN/OUT: wanted PIRQ (-1: any); the one given",
    "bus" / signed_int * "IN (MSI)",
    "devfn" / signed_int * "IN (MSI)",
    "entry_nr" / signed_int * "IN (MSI-X entry) / IN/OUT (multi-MSI count)",
    Padding(4),
    "table_base" / uint64_t * "IN (MSI-X table base)",
)
physdev_map_pirq.docs = "PHYSDEVOP_map_pirq: give a domain a PIRQ for a GSI or MSI."

PHYSDEVOP_unmap_pirq = 14
physdev_unmap_pirq = Struct(
    "domid" / xen.domid_t * "IN",
    Padding(2),
    "pirq" / signed_int * "IN",
)
physdev_unmap_pirq.docs = "PHYSDEVOP_unmap_pirq."

PHYSDEVOP_manage_pci_add = 15
PHYSDEVOP_manage_pci_remove = 16
physdev_manage_pci = Struct(
    "bus" / uint8_t * "IN",
    "devfn" / uint8_t * "IN",
)
physdev_manage_pci.docs = "PHYSDEVOP_manage_pci_{add,remove}: tell Xen about a PCI device (dom0)."

PHYSDEVOP_restore_msi = 19
physdev_restore_msi = Struct(
    "bus" / uint8_t * "IN",
    "devfn" / uint8_t * "IN",
)
physdev_restore_msi.docs = "PHYSDEVOP_restore_msi: reprogram a device's MSI after resume (dom0)."

PHYSDEVOP_manage_pci_add_ext = 20
physdev_manage_pci_ext = Struct(
    "bus" / uint8_t * "IN",
    "devfn" / uint8_t * "IN",
    Padding(2),
    "is_extfn" / uint32_t * "IN",
    "is_virtfn" / uint32_t * "IN: an SR-IOV virtual function",
    "physfn" / Struct("bus" / uint8_t, "devfn" / uint8_t) * "IN: its physical function",
    Padding(2),
)
physdev_manage_pci_ext.docs = "PHYSDEVOP_manage_pci_add_ext (dom0)."

physdev_op = Struct(
    "cmd" / uint32_t * "IN: PHYSDEVOP_*",
    Padding(4),
    "u" / CUnion(
        "irq_status_query" / physdev_irq_status_query,
        "set_iopl" / physdev_set_iopl,
        "set_iobitmap" / physdev_set_iobitmap,
        "apic_op" / physdev_apic,
        "irq_op" / physdev_irq,
    ),
)
physdev_op.docs = "Argument of the pre-3.2 HYPERVISOR_physdev_op_compat(op)."

PHYSDEVOP_setup_gsi = 21
physdev_setup_gsi = Struct(
    "gsi" / signed_int * "IN",
    "triggering" / uint8_t * "IN: 0 edge, 1 level",
    "polarity" / uint8_t * "IN: 0 high, 1 low",
    Padding(2),
)
physdev_setup_gsi.docs = "PHYSDEVOP_setup_gsi: trigger mode and polarity of a GSI (dom0)."

PHYSDEVOP_get_free_pirq = 23
physdev_get_free_pirq = Struct(
    "type" / signed_int * "IN: MAP_PIRQ_TYPE_*",
    "pirq" / uint32_t * "OUT",
)
physdev_get_free_pirq.docs = "PHYSDEVOP_get_free_pirq: an unused PIRQ number."

XEN_PCI_MMCFG_RESERVED = 0x1
PHYSDEVOP_pci_mmcfg_reserved = 24
physdev_pci_mmcfg_reserved = Struct(
    "address" / uint64_t * "IN",
    "segment" / uint16_t * "IN",
    "start_bus" / uint8_t * "IN",
    "end_bus" / uint8_t * "IN",
    "flags" / uint32_t * "IN: XEN_PCI_MMCFG_RESERVED",
)
physdev_pci_mmcfg_reserved.docs = "PHYSDEVOP_pci_mmcfg_reserved: an MMCONFIG range is reserved in the E820 map."

XEN_PCI_DEV_EXTFN = 0x1
XEN_PCI_DEV_VIRTFN = 0x2
XEN_PCI_DEV_PXM = 0x4

PHYSDEVOP_pci_device_add = 25
physdev_pci_device_add = Struct(
    "seg" / uint16_t * "IN",
    "bus" / uint8_t * "IN",
    "devfn" / uint8_t * "IN",
    "flags" / uint32_t * "IN: XEN_PCI_DEV_*",
    "physfn" / Struct("bus" / uint8_t, "devfn" / uint8_t) * "IN: physical function of a VF",
    Padding(2),
    # followed by uint32_t optarr[] (flexible; [0] is the PXM with XEN_PCI_DEV_PXM)
)
physdev_pci_device_add.docs = "PHYSDEVOP_pci_device_add; optional uint32 parameters follow the struct."

PHYSDEVOP_pci_device_remove = 26
PHYSDEVOP_restore_msi_ext = 27
PHYSDEVOP_prepare_msix = 30
PHYSDEVOP_release_msix = 31
physdev_pci_device = Struct(
    "seg" / uint16_t * "IN",
    "bus" / uint8_t * "IN",
    "devfn" / uint8_t * "IN",
)
physdev_pci_device.docs = "A PCI device address; argument of the remove/restore_msi_ext/msix ops."

PHYSDEVOP_DBGP_RESET_PREPARE = 1
PHYSDEVOP_DBGP_RESET_DONE = 2
PHYSDEVOP_DBGP_BUS_UNKNOWN = 0
PHYSDEVOP_DBGP_BUS_PCI = 1
PHYSDEVOP_dbgp_op = 29
physdev_dbgp_op = Struct(
    "op" / uint8_t * "IN: PHYSDEVOP_DBGP_RESET_*",
    "bus" / uint8_t * "IN: PHYSDEVOP_DBGP_BUS_*",
    "u" / CUnion("pci" / physdev_pci_device) * "IN",
)
physdev_dbgp_op.docs = "PHYSDEVOP_dbgp_op: USB debug port handover around a controller reset."

# Obsolete: there is no op 4 any more; the value survives as a flag name.
PHYSDEVOP_IRQ_UNMASK_NOTIFY = 4

"""The BIOS E820 memory-map entry: firmware-architectural, not from a Xen header.

XENMEM_memory_map / XENMEM_machine_memory_map / XENMEM_set_memory_map pass
arrays of these through ``xen_memory_map.buffer``; memory.h only says they
are "in the format of BIOS INT 15h, EAX=E820h".  The registry marks this
module as having no header, and the header cross-check leaves it out.
"""

from construct import Struct

from abi.cdefs import uint32_t, uint64_t

E820_RAM = 1  # usable RAM
E820_RESERVED = 2
E820_ACPI = 3  # ACPI tables, reclaimable after boot
E820_NVS = 4  # ACPI non-volatile storage
E820_UNUSABLE = 5

e820entry = Struct(
    "addr" / uint64_t * "start of the range (bytes)",
    "size" / uint64_t * "length of the range (bytes)",
    "type" / uint32_t * "E820_*",
)
e820entry.docs = "One range of a (pseudo-)physical memory map; 20 bytes, packed."

"""Build a 64-bit PV domain: xc_dom_boot_image for "xen-3.0-x86_64", through the channel.

The steps and their order are libxenguest's: raise the memory limit,
populate the domain's pseudo-physical memory (meminit_pv), load the kernel by
physical address and the ramdisk, write the P2M list, start_info and the boot
page tables (L1 entries of page-table frames read-only), clear the xenstore
and console pages, have Xen fill the hypercall page (XEN_DOMCTL_hypercall_init),
pin the L4 on the guest's behalf (MMUEXT_PIN_L4_TABLE with foreigndom) and set
vCPU 0's context (XEN_DOMCTL_setvcpucontext). Every write to the guest goes
through foreign mappings of its frames.
"""
from __future__ import annotations

from dataclasses import dataclass

from abi.arch_x86_xen import VGCF_in_kernel, VGCF_online, vcpu_guest_context
from abi.cdefs import plain
from abi.x86_regs import X86_DR6_DEFAULT, X86_DR7_DEFAULT, X86_EFLAGS_IF
from abi.xen import MAX_GUEST_CMDLINE, start_info
from abi.xen_x86_64 import FLAT_KERNEL_CS, FLAT_KERNEL_DS, FLAT_KERNEL_SS
from dom0.builder.errors import BuildError
from dom0.builder.image import KernelImage, module_contents, module_size, parse_kernel
from dom0.builder.layout import PAGE_SHIFT, PAGE_SIZE, Layout, pagetable_entries, plan_layout

LIBXL_MAXMEM_CONSTANT_KB = 1024     # the slack libxl adds above the target when it sets max_mem
MAP_BATCH = 1024


@dataclass
class BuildResult:
    domid: int
    image: KernelImage
    layout: Layout
    p2m: list[int]                  # pfn -> mfn, as populated
    start_info: dict                # what was written into the start_info page
    context: dict                   # vCPU 0's vcpu_guest_context

    @property
    def l4_mfn(self) -> int:
        return self.p2m[self.layout.pgtables.pfn]


def _write_pages(xc, domid: int, first_pfn: int, data: bytes) -> None:
    """Copy `data` into the guest starting at `first_pfn`, through foreign mappings."""
    pages = (len(data) + PAGE_SIZE - 1) // PAGE_SIZE
    for start in range(0, pages, MAP_BATCH):
        count = min(MAP_BATCH, pages - start)
        views = xc.map_foreign_pages(domid, range(first_pfn + start, first_pfn + start + count))
        for i, view in enumerate(views):
            chunk = data[(start + i) * PAGE_SIZE:(start + i + 1) * PAGE_SIZE]
            view[:len(chunk)] = chunk
            if len(chunk) < PAGE_SIZE:
                view[len(chunk):] = bytes(PAGE_SIZE - len(chunk))
            view.release()


def start_info_fields(lay: Layout, p2m: list[int], shared_info_mfn: int, cmdline: bytes,
                      store_evtchn: int, console_evtchn: int, guest_type: str) -> dict:
    """start_info_x86_64: what the guest finds at rsi."""
    magic = guest_type.encode()[:31]
    line = cmdline[:MAX_GUEST_CMDLINE - 1]
    p2m_given = lay.p2m_base is not None
    return {
        "magic": magic + bytes(32 - len(magic)),
        "nr_pages": lay.total_pages,
        "shared_info": shared_info_mfn << PAGE_SHIFT,
        "flags": lay.flags,
        "store_mfn": p2m[lay.xenstore_pfn],
        "store_evtchn": store_evtchn,
        "console": {"domU": {"mfn": p2m[lay.console_pfn], "evtchn": console_evtchn}},
        "pt_base": lay.pgtables.vstart,
        "nr_pt_frames": lay.nr_pt_frames,
        "mfn_list": lay.p2m.vstart,
        "mod_start": lay.initrd_start if lay.ramdisk else 0,
        "mod_len": lay.initrd_len if lay.ramdisk else 0,
        "cmd_line": line + bytes(MAX_GUEST_CMDLINE - len(line)),
        "first_p2m_pfn": lay.p2m.pfn if p2m_given else 0,
        "nr_p2m_frames": lay.p2m.pages if p2m_given else 0,
    }


def initial_context(lay: Layout, l4_mfn: int) -> dict:
    """vcpu_x86_64: the registers vCPU 0 starts with."""
    c = plain(vcpu_guest_context.parse(bytes(vcpu_guest_context.sizeof())))
    regs = c["user_regs"]
    regs.update(rip=lay.virt_entry, rsp=lay.stack_top, rsi=lay.start_info_virt, rflags=X86_EFLAGS_IF,
                ds=FLAT_KERNEL_DS, es=FLAT_KERNEL_DS, fs=FLAT_KERNEL_DS, gs=FLAT_KERNEL_DS,
                ss=FLAT_KERNEL_SS, cs=FLAT_KERNEL_CS)
    c["debugreg"][6] = X86_DR6_DEFAULT
    c["debugreg"][7] = X86_DR7_DEFAULT
    c["flags"] = VGCF_in_kernel | VGCF_online
    c["ctrlreg"][3] = l4_mfn << PAGE_SHIFT          # xen_pfn_to_cr3
    c["kernel_ss"] = regs["ss"]
    c["kernel_sp"] = regs["rsp"]
    return c


def _pagetable_pages(lay: Layout, p2m: list[int]) -> dict[int, bytearray]:
    tables: dict[int, bytearray] = {pfn: bytearray(PAGE_SIZE) for pfn in lay.all_pagetable_pfns()}
    for table_pfn, index, entry in pagetable_entries(lay, p2m):
        tables[table_pfn][index * 8:index * 8 + 8] = entry.to_bytes(8, "little")
    return tables


def build_pv_domain(xc, domid: int, kernel: bytes | KernelImage, memory_mb: int,
                    ramdisk: bytes = b"", cmdline: str | bytes = "",
                    store_evtchn: int = 0, console_evtchn: int = 0, pin: bool = True) -> BuildResult:
    """Build `kernel` into the (created, paused, empty) domain `domid` with `memory_mb` MiB.

    Raises BuildError for a bad image or a layout that does not fit; XenError
    (from dom0.xc) when the hypervisor refuses a step.
    """
    image = kernel if isinstance(kernel, KernelImage) else parse_kernel(kernel)
    nr_pages = (memory_mb << 20) >> PAGE_SHIFT
    unziplen, module_length = module_size(ramdisk) if ramdisk else (0, 0)
    lay = plan_layout(image, nr_pages, module_length)
    if isinstance(cmdline, str):
        cmdline = cmdline.encode()

    xc.domain_setmaxmem(domid, (nr_pages << (PAGE_SHIFT - 10)) + LIBXL_MAXMEM_CONSTANT_KB)
    # a range, not a list: nothing proportional to the request exists before the hypervisor
    # has given the frames (it answers ENOMEM at the first batch it cannot)
    p2m = xc.populate_physmap(domid, range(nr_pages))

    # kernel: every PT_LOAD segment at its physical address (bss zeroed)
    kernel_bytes = bytearray(lay.kernel.pages * PAGE_SIZE)
    image.elf.load_into(kernel_bytes, image.elf.pstart)
    _write_pages(xc, domid, lay.kernel.pfn, bytes(kernel_bytes))
    if lay.ramdisk is not None:
        _write_pages(xc, domid, lay.ramdisk.pfn, module_contents(ramdisk, unziplen))

    # P2M list (setup_pgtables_x86_64 copies it in), its page tables after it with INIT_P2M
    p2m_bytes = b"".join(mfn.to_bytes(8, "little") for mfn in p2m)
    tables = _pagetable_pages(lay, p2m)
    if lay.p2m_base is None:
        _write_pages(xc, domid, lay.p2m.pfn, p2m_bytes)
    else:
        list_pages = (len(p2m_bytes) + PAGE_SIZE - 1) // PAGE_SIZE
        _write_pages(xc, domid, lay.p2m.pfn, p2m_bytes + bytes(list_pages * PAGE_SIZE - len(p2m_bytes)))
    for pfn in sorted(tables):
        _write_pages(xc, domid, pfn, bytes(tables[pfn]))

    info = xc.domain_getinfo(domid)
    if info["domain"] != domid:
        raise BuildError(f"domain {domid} vanished while it was being built")
    fields = start_info_fields(lay, p2m, info["shared_info_frame"], cmdline,
                               store_evtchn, console_evtchn, image.guest_type)
    _write_pages(xc, domid, lay.start_info_pfn, start_info.build(fields))
    _write_pages(xc, domid, lay.xenstore_pfn, bytes(PAGE_SIZE))
    _write_pages(xc, domid, lay.console_pfn, bytes(PAGE_SIZE))

    if lay.hypercall_pfn is not None:
        xc.hypercall_init(domid, p2m[lay.hypercall_pfn])

    l4_mfn = p2m[lay.pgtables.pfn]
    if pin:
        xc.pin_table(4, l4_mfn, domid)
    context = initial_context(lay, l4_mfn)
    xc.vcpu_setcontext(domid, 0, context)
    return BuildResult(domid=domid, image=image, layout=lay, p2m=p2m, start_info=fields, context=context)

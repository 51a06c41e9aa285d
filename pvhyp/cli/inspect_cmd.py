"""`pvhyp inspect`: a kernel file before it runs, or a running domain's live state.

`pvhyp inspect KERNEL [--memory MB] [--ramdisk FILE]` (a path to an existing file):
what the domain builder sees and would do. Shows how the image is wrapped
(bzImage, compression), its PT_LOAD segments, the Xen ELF notes as the kernel
declares them, and the 64-bit PV layout the builder would lay out in a domain
of the given size: pseudo-physical frames and virtual addresses of the kernel,
ramdisk, P2M list, start_info, xenstore and console pages, boot page tables
and boot stack, and the start_info fields and registers derived from them. No
hypervisor is needed: it is the builder's own parsing and layout code, stopped
before the first hypercall.

`pvhyp inspect DOM --VIEW [--json]` (a domain name or id of a running `pvhyp up`):
one live view, from the toolstack's `inspect` request (dom0/toolstack/inspect.py;
the hypervisor's views are pvhyp/introspect.py). VIEW_HELP below is the list.
"""
from __future__ import annotations

import json
import os
import pathlib

from pvhyp.cli.errors import UserError
from pvhyp.cli.up_cmd import add_run_dir

FEATURE_BITS = {0: "writable_page_tables", 1: "writable_descriptor_tables", 2: "auto_translated_physmap",
                3: "supervisor_mode_kernel", 4: "pae_pgdir_above_4gb", 5: "mmu_pt_update_preserve_ad",
                7: "gnttab_map_avail_bits", 8: "hvm_callback_vector", 9: "hvm_safe_pvclock",
                10: "hvm_pirqs", 11: "dom0", 13: "memory_op_vnode_supported", 15: "linux_rsdp_unrestricted"}


# The live views: (option, argparse extras, one line of help naming the Xen source of the real thing).
VIEW_HELP = (
    ("pagetables", {"metavar": "VA"}, "the 4-level walk of VA in a vCPU's CR3: each entry, its flags, "
     "the frame's type, counts and owner (xen/arch/x86/mm.c, mm/guest_walk.c)"),
    ("frames", {"action": "store_true"}, "the domain's frames by type: L1-L4 pinned or not, writable, "
     "granted, shared_info, grant table; -v lists them (xen/arch/x86/mm.c, arch/x86/include/asm/mm.h)"),
    ("evtchn", {"action": "store_true"}, "ports: state, binding (VIRQ, interdomain peer), notify vCPU, "
     "pending/masked bits (xen/common/event_channel.c, event_2l.c)"),
    ("grants", {"action": "store_true"}, "grant entries in use: flags, grantee, frame, pins; and the "
     "maptrack, who maps what (xen/common/grant_table.c)"),
    ("rings", {"action": "store_true"}, "each ring dom0 serves for it: backend rings' indexes and "
     "outstanding requests, xenstore and console (xen/include/public/io/ring.h, Linux xen-blkback)"),
    ("xenstore", {"nargs": "?", "const": "", "metavar": "PATH"}, "the subtree at PATH (default the "
     "domain's home) with permissions and watches (tools/xenstore/xenstored_core.c, xenstored_watch.c)"),
)


def add_parser(sub) -> None:
    import argparse
    p = sub.add_parser(
        "inspect", help="a kernel file's Xen ELF notes and layout, or a running domain's live state",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="pvhyp inspect KERNEL: the kernel's Xen ELF notes and the layout the builder would use.\n"
                    "pvhyp inspect DOM --VIEW: one live view of a domain of `pvhyp up` (the views below,\n"
                    "each with the Xen source that holds the real thing).")
    p.add_argument("target", metavar="KERNEL|DOM",
                   help="a vmlinux/bzImage/XTF kernel file, or a running domain's name or id")
    p.add_argument("--memory", type=int, default=None, metavar="MB", help="KERNEL: domain memory (default 128)")
    p.add_argument("--ramdisk", metavar="FILE", help="KERNEL: include a ramdisk of this file's size in the layout")
    group = p.add_mutually_exclusive_group()
    for name, extras, text in VIEW_HELP:
        group.add_argument(f"--{name}", dest=f"view_{name}", help=text, **extras)
    p.add_argument("--vcpu", type=int, default=0, metavar="N", help="--pagetables: the vCPU whose CR3 (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="--frames: list the frames, not only count them")
    p.add_argument("--json", action="store_true", help="the view as JSON")
    add_run_dir(p)
    p.set_defaults(func=run)


def _read(path: str, what: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None


def _features(mask: int) -> str:
    names = [FEATURE_BITS.get(bit, f"bit{bit}") for bit in range(32) if mask >> bit & 1]
    return "|".join(names) or "-"


def _note_value(value) -> str:
    return f"{value:#x}" if isinstance(value, int) else repr(value)


def _print_hypercall_stubs(page_va: int) -> None:
    """Two of the 32-byte stubs Xen writes (XEN_DOMCTL_hypercall_init): an ordinary one and iret's."""
    from abi.xen import HYPERCALL_NAMES, __HYPERVISOR_iret
    from pvhyp.domctl import hypercall_page_bytes
    page = hypercall_page_bytes()
    try:
        import capstone
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    except ImportError:
        md = None
    for slot in (0, __HYPERVISOR_iret):
        stub = page[slot * 32:slot * 32 + 32].rstrip(b"\xcc")
        if md is None:
            text = stub.hex(" ")
        else:
            text = "; ".join(f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(stub, page_va + slot * 32))
        print(f"    {page_va + slot * 32:#x} {HYPERCALL_NAMES.get(slot, slot)}: {text}")


def _chosen_view(args) -> tuple[str, str | None] | None:
    for name, _extras, _ in VIEW_HELP:
        value = getattr(args, f"view_{name}")
        if value is not None and value is not False:
            return name, value if isinstance(value, str) and value else None
    return None


def run(args) -> int:
    view = _chosen_view(args)
    # A file, or anything path-like (a domain's name holds no "/"), is a kernel.
    if view is None and (os.path.isfile(args.target) or os.sep in args.target):
        return run_kernel(args)
    if args.memory is not None or args.ramdisk:
        raise UserError(f"--memory and --ramdisk describe a kernel file; {args.target!r} is none")
    if view is None:
        raise UserError("inspect DOM needs a view: " + ", ".join(
            f"--{name}" + (" VA" if name == "pagetables" else "") for name, _, _ in VIEW_HELP))
    return run_domain(args, *view)


def run_domain(args, view: str, arg: str | None) -> int:
    from pvhyp.cli.inspect_views import render
    from pvhyp.cli.xl_cmd import _request
    dom: str | int = int(args.target) if args.target.isdigit() else args.target
    request = {"dom": dom, "view": view, "vcpu": args.vcpu, "verbose": args.verbose}
    if arg is not None:
        request["arg"] = arg
    reply = _request(args, "inspect", **request)
    if args.json:
        print(json.dumps({k: reply[k] for k in ("domid", "name", "view", "data")}, indent=1))
    else:
        print(render(reply, args.verbose))
    return 0


def run_kernel(args) -> int:
    from dom0.builder import BuildError, parse_kernel, plan_layout
    from dom0.builder.image import module_size
    from dom0.builder.layout import PAGE_SIZE

    args.kernel = args.target
    args.memory = 128 if args.memory is None else args.memory
    data = _read(args.kernel, "kernel")
    ramdisk_size = module_size(_read(args.ramdisk, "ramdisk"))[1] if args.ramdisk else 0
    if args.memory <= 0:
        raise UserError("--memory must be a positive number of MiB")
    try:
        image = parse_kernel(data)
        layout = plan_layout(image, (args.memory << 20) // PAGE_SIZE, ramdisk_size)
    except BuildError as e:
        raise UserError(f"{args.kernel}: {e}") from None

    p, elf = image.params, image.elf
    wrapped = ("bzImage carrying a " if image.container == "bzImage" else "") + (
        f"{image.compression}-compressed " if image.compression else "")
    print(f"{args.kernel}: {wrapped}ELF64 x86-64 ({len(elf.data)} bytes), guest type {image.guest_type}")
    print("\nPT_LOAD segments (loaded by physical address):")
    for s in elf.segments:
        print(f"  paddr {s.paddr:#018x}  vaddr {s.vaddr:#018x}  file {s.filesz:#9x}  mem {s.memsz:#9x}")
    print(f"\nXen ELF notes (from {p.note_source}):")
    for name, value in p.notes:
        print(f"  {name:<20} {_note_value(value)}")
    print(f"  -> features required {_features(p.f_required)}; supported {_features(p.f_supported)}")

    print(f"\nAddresses: virt_base {p.virt_base:#x}, paddr_offset {p.elf_paddr_offset:#x}, "
          f"kernel {p.virt_kstart:#x}-{p.virt_kend:#x}, entry {p.virt_entry:#x}")
    print(f"\nLayout in {args.memory} MiB ({layout.total_pages} pages), as xc_dom_x86 builds it:")
    print(f"  {'segment':<12} {'virtual start':>18} {'virtual end':>18} {'pfn':>8} {'pages':>6}")
    for seg in layout.segments:
        print(f"  {seg.name:<12} {seg.vstart:#18x} {seg.vend:#18x} {seg.pfn:#8x} {seg.pages:6}")
    print(f"  initial mapping: {layout.virt_base:#x}-{layout.virt_pgtab_end - 1:#x} "
          f"({layout.nr_pt_frames} page-table frames, read-only in the guest; "
          f"{len(layout.maps)} mapping{'s' if len(layout.maps) > 1 else ''})")
    if layout.hypercall_pfn is not None:
        assert p.virt_hypercall is not None     # plan_layout derives hypercall_pfn from it
        print(f"  hypercall page: {p.virt_hypercall:#x} (pfn {layout.hypercall_pfn:#x}), filled by Xen")
        _print_hypercall_stubs(p.virt_hypercall)
    assert layout.pgtables is not None and layout.p2m is not None   # plan_layout allocates both
    print("\nstart_info (at rsi):")
    print(f"  nr_pages {layout.total_pages}  pt_base {layout.pgtables.vstart:#x}  "
          f"nr_pt_frames {layout.nr_pt_frames}  mfn_list {layout.p2m.vstart:#x}  flags {layout.flags:#x}")
    if layout.ramdisk:
        print(f"  mod_start {layout.initrd_start:#x}  mod_len {layout.initrd_len:#x}")
    if layout.p2m_base is not None:
        print(f"  first_p2m_pfn {layout.p2m.pfn:#x}  nr_p2m_frames {layout.p2m.pages}")
    print(f"\nvCPU 0: rip {layout.virt_entry:#x}  rsp {layout.stack_top:#x}  rsi {layout.start_info_virt:#x}  "
          f"cs 0xe033 ss 0xe02b  cr3 = L4 at pfn {layout.pgtables.pfn:#x}")
    return 0

"""`pvhyp bench build [KERNEL]`: how long the domain builder takes, step by step.

Parses the kernel (unwrap, decompress, ELF, notes), plans the layout, then
builds it into fresh domains through dom0's in-process channel (populate,
load, P2M, page tables, start_info, hypercall page, pin, vCPU context) and
destroys them again. Default kernel: XTF's example. Prints `name: value unit`.
"""
from __future__ import annotations

import pathlib
import time

from pvhyp.cli.errors import UserError

DESCRIPTION = "domain builder: kernel parse time and build time into a fresh domain (ms)"


def add_arguments(parser) -> None:
    parser.add_argument("kernel", nargs="?", help="kernel to build (default: XTF test-pv64-example)")
    parser.add_argument("--memory", type=int, default=128, metavar="MB", help="domain memory (default 128)")
    parser.add_argument("--runs", type=int, default=5, help="builds to average (default 5)")


def _default_kernel() -> pathlib.Path:
    import os
    root = pathlib.Path(__file__).resolve().parents[2]
    for directory in (os.environ.get("PVHYP_XTF_DIR"), root.parent / "shared" / "xtf"):
        if directory and (pathlib.Path(directory) / "test-pv64-example").is_file():
            return pathlib.Path(directory) / "test-pv64-example"
    raise UserError("no kernel given and XTF's test-pv64-example not found ($PVHYP_XTF_DIR or ../shared/xtf)")


def run(args) -> int:
    from dom0.builder import BuildError, build_pv_domain, parse_kernel, plan_layout
    from dom0.xc import XenCtrl
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.host import build_hypervisor

    path = pathlib.Path(args.kernel) if args.kernel else _default_kernel()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    runs = max(1, args.runs)
    try:
        start = time.perf_counter()
        image = parse_kernel(data)
        parse_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        layout = plan_layout(image, (args.memory << 20) >> 12)
        plan_ms = (time.perf_counter() - start) * 1000
    except BuildError as e:
        raise UserError(f"{path}: {e}") from None

    hv = build_hypervisor(args.memory + 64, cpu=False)
    dom0 = create_process_domain(hv, nr_pages=256, privileged=True, domid=0)
    xc = XenCtrl(InProcessChannel(hv, dom0))
    times = []
    for _ in range(runs):
        domid = xc.domain_create()
        start = time.perf_counter()
        build_pv_domain(xc, domid, image, args.memory)
        times.append((time.perf_counter() - start) * 1000)
        xc.domain_destroy(domid)
    hv.close()
    print(f"kernel: {path.name} ({image.container}{', ' + image.compression if image.compression else ''})")
    print(f"parse: {parse_ms:.1f} ms")
    print(f"plan_layout: {plan_ms:.2f} ms")
    print(f"build_{args.memory}MiB: {sum(times) / len(times):.1f} ms (mean of {runs}, best {min(times):.1f})")
    print(f"page_table_frames: {layout.nr_pt_frames} frames")
    return 0

"""`pvhyp bench mmu`: the PV MMU's validation speed, through the real hypercall table."""
from __future__ import annotations

import struct
import time

DESCRIPTION = "validated mmu_update entries per second; time to pin a 4-level table covering 64 MiB"

_P, _RW, _US, _A = 0x1, 0x2, 0x4, 0x20
_COVER_PAGES = 64 << 20 >> 12          # 16384 pages: 32 L1 tables
_REQS_VA = 0x10000                     # pfns 16-31: request arrays (up to 4096 entries)
_DONE_VA = 0x8000


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=512, help="mmu_update entries per hypercall (max 4096)")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to issue mmu_updates")
    parser.add_argument("--pins", type=int, default=3, help="pin/unpin rounds of the 64 MiB table (best is shown)")


def run(args) -> int:
    from abi import xen as X
    from pvhyp.cli.errors import UserError
    from pvhyp.host import build_hypervisor
    from pvhyp.hypercall_table import HypercallContext
    from pvhyp.mm.testbed import build_pv_domain

    if not 1 <= args.batch <= 4096:
        raise UserError("--batch must be 1..4096")
    nr_l1 = _COVER_PAGES // 512
    nr_pages = _COVER_PAGES + 1024
    table_pfns = range(_COVER_PAGES, _COVER_PAGES + nr_l1 + 3)      # the new hierarchy's frames
    scratch_l1_pfn = table_pfns[-1] + 1
    hv = build_hypervisor((nr_pages >> 8) + 32, cpu=False)
    tables = build_pv_domain(hv, nr_pages, read_only_pfns=list(table_pfns) + [scratch_l1_pfn])
    d = tables.domain
    ctx = HypercallContext(d.vcpus[0])
    table = hv.hypercalls
    nr_mmu_update = X.HYPERCALL_NUMBERS["mmu_update"]
    nr_mmuext = X.HYPERCALL_NUMBERS["mmuext_op"]

    def mmuext(cmd: int, mfn: int) -> int:
        ctx.write(_REQS_VA, struct.pack("<I4xQQ", cmd, mfn, 0))
        return table.dispatch(ctx, nr_mmuext, [_REQS_VA, 1, 0, X.DOMID_SELF, 0, 0])

    # --- validated mmu_update entries: (re)map data pages in a pinned L1, each a full validation ---
    scratch = d.p2m[scratch_l1_pfn]
    if mmuext(X.MMUEXT_PIN_L1_TABLE, scratch):
        raise RuntimeError("could not pin the benchmark's L1 table")
    batches = []
    for shift in range(2):
        reqs = b"".join(struct.pack("<QQ", (scratch << 12) + (i % 512) * 8,
                                    d.p2m[64 + (i + shift * 7) % 4096] << 12 | _P | _RW | _US | _A)
                        for i in range(args.batch))
        batches.append(reqs)
    done = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    n = 0
    while time.perf_counter() < deadline:
        ctx.write(_REQS_VA, batches[n & 1])
        rc = table.dispatch(ctx, nr_mmu_update, [_REQS_VA, args.batch, _DONE_VA, X.DOMID_SELF, 0, 0])
        if rc:
            raise RuntimeError(f"mmu_update failed: {rc}")
        done += args.batch
        n += 1
    elapsed = time.perf_counter() - start
    print(f"mmu_update_validated_entries: {done / elapsed:.0f} entries/s")

    # --- pin a 4-level table covering 64 MiB (32 L1 tables of 512 entries) ---
    mem = hv.memory
    l4, l3, l2 = (d.p2m[p] for p in table_pfns[:3])
    l1s = [d.p2m[p] for p in table_pfns[3:]]
    for i, l1 in enumerate(l1s):
        entries = [d.p2m[(i * 512 + j) % 4096 + 64] << 12 | _P | _RW | _US | _A for j in range(512)]
        mem.write(l1 << 12, struct.pack("<512Q", *entries))
        mem.write_u64((l2 << 12) + i * 8, l1 << 12 | _P | _RW | _US | _A)
    mem.write_u64(l3 << 12, l2 << 12 | _P | _RW | _US | _A)
    mem.write_u64((l4 << 12) + 8, l3 << 12 | _P | _RW | _US | _A)
    best = float("inf")
    for _ in range(max(1, args.pins)):
        t0 = time.perf_counter()
        rc = mmuext(X.MMUEXT_PIN_L4_TABLE, l4)
        t1 = time.perf_counter()
        if rc:
            raise RuntimeError(f"pinning the 64 MiB table failed: {rc}")
        best = min(best, t1 - t0)
        if mmuext(X.MMUEXT_UNPIN_TABLE, l4):
            raise RuntimeError("unpinning the 64 MiB table failed")
    print(f"pin_l4_table_64mib: {best * 1000:.1f} ms")
    print(f"pin_l4_table_64mib_entries: {(len(l1s) * 512 + len(l1s) + 2) / best:.0f} entries/s")
    hv.destroy_domain(d.domid)
    hv.close()
    return 0

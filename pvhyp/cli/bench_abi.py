"""`pvhyp bench abi`: how fast guest structs parse, construct vs the fast codec.

The hypercall hot paths parse guest memory on every call: a batch of
mmu_update entries (Linux sends up to 512 at once while building page
tables) and multicall entries.  Prints ``name: value unit`` lines.
"""
from __future__ import annotations

import os
import time

DESCRIPTION = "parses per second: 512-entry mmu_update batches and multicall_entry, construct vs fast codec"
BATCH = 512


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=0.4, help="time per measurement (default 0.4)")


def _rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second, over at least ``seconds``."""
    fn()  # warm up (codec generation, caches)
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def run(args) -> int:
    from construct import Array

    from abi import fast, xen

    seconds = getattr(args, "seconds", 0.4)
    batch_construct = Array(BATCH, xen.mmu_update)
    batch_compiled = batch_construct.compile()
    mmu_codec = fast.codec(xen.mmu_update)
    batch = os.urandom(BATCH * mmu_codec.size)

    multicall_compiled = xen.multicall_entry.compile()
    multicall_codec = fast.codec(xen.multicall_entry)
    entry = os.urandom(multicall_codec.size)

    results = [
        ("mmu_update_batch512_construct", _rate(lambda: batch_construct.parse(batch), seconds), "batches/s"),
        ("mmu_update_batch512_construct_compiled", _rate(lambda: batch_compiled.parse(batch), seconds), "batches/s"),
        ("mmu_update_batch512_fast", _rate(lambda: mmu_codec.parse_array(batch, BATCH), seconds), "batches/s"),
        ("multicall_entry_construct", _rate(lambda: xen.multicall_entry.parse(entry), seconds), "parses/s"),
        ("multicall_entry_construct_compiled", _rate(lambda: multicall_compiled.parse(entry), seconds), "parses/s"),
        ("multicall_entry_fast", _rate(lambda: multicall_codec.parse(entry), seconds), "parses/s"),
    ]
    for name, value, unit in results:
        print(f"{name}: {value:.0f} {unit}")
    speedup = results[2][1] / results[0][1]
    print(f"mmu_update_batch512_fast_speedup: {speedup:.1f} x")
    return 0

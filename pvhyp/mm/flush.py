"""TLB maintenance: the one way the MMU tells the CPU engine a translation changed.

The CPU engine caches translations (unicorn's TLB). Whenever a guest-visible
translation may have changed (a page-table write, a type change, a base
pointer switch, an explicit flush request) the MMU calls `flush_tlb`; the
engine's `vcpu.arch.flush_tlb()` does the work (for a vCPU running on another
thread it queues the flush for that thread). Over-flushing costs time;
under-flushing is a security bug, so callers flush whenever in doubt.
"""
from __future__ import annotations

from typing import Iterable


def flush_tlb(domain, vcpus: Iterable | None = None) -> None:
    """Flush the TLBs of `vcpus` (default: every vCPU of `domain`)."""
    for v in (domain.vcpus if vcpus is None else vcpus):
        if v.arch is not None:
            v.arch.flush_tlb()

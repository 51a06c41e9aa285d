"""The PV MMU: frame table, page types, validation of guest page tables.

    frametable.py  who owns each frame, and the per-frame arrays (Xen's page_info)
    pagetype.py    page types and reference counts; table validation (get_page_type & co)
    mmu.py         the operations behind mmu_update / mmuext_op / update_va_mapping /
                   memory_op, domain set-up and teardown; `attach(hv)` makes hv.mmu
    ptwr.py        writable page tables: the CPU engine's entry for direct PTE stores
    flush.py       flush_tlb(domain, vcpus): the one way to tell the CPU engine
    checker.py     check_invariants(hv): an independent audit of all of the above
    testbed.py     build_pv_domain(hv, nr_pages): a ready PV domain for tests and benchmarks
"""

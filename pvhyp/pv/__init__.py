"""x86-64 PV: what makes a vCPU paravirtual, independent of the CPU engine.

Grouped as Xen groups arch/x86/pv/: the PV-visible vCPU state and its
mechanisms (state.py: trap table, callbacks, kernel stack, segment bases,
IOPL, debug registers), descriptor tables (descriptors.py), the hypervisor's
part of every guest address space (xen_area.py), and the entry path a CPU
engine calls into (entry.py: hypercalls, trap bouncing in traps.py,
privileged-instruction emulation in emulate.py, writable page tables in
ro_page_fault.py).  The engine (pvhyp/cpu) runs guest code and reports what
happened; everything Xen-PV about the answer lives here.
"""

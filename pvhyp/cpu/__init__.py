"""The CPU engine: x86-64 PV guests on a software CPU (unicorn 2.1.4).

The PV behaviour the engine calls into (entry path, trap bouncing,
emulation, writable page tables, the hypervisor's area of the address space) is
engine-independent and lives in pvhyp/pv.

Layers, bottom up
-----------------
unicorn_quirks  start-up probe of unicorn's private CPU-context fields (the
                #PF error code, QEMU's double-fault bookkeeping, the GPR
                block) and of its hook quirks; refuses to run on any other
                unicorn.  `require_supported_unicorn()` for entry points.
xen_area        XenArea: the hypervisor's pages and page tables in
                DOMID_XEN frames (M2P read-only at 0xffff800000000000,
                per-vCPU GDT + entry stack, CPL0 `iretq` stub, IDT, TSS);
                `xen_l4_entries()` = the L4 slots every guest L4 gets.
engine          CpuEngine: one unicorn per vCPU, whole machine memory as its
                physical space, hooks -> a VcpuHost; run/kick/flush_tlb.
                Pure mechanics, no PV policy.
traps, entry,   the PV behaviour (Xen's bounce frames, iret, events,
emulate, ptwr   syscall callback, int N DPL rule, privileged instructions,
                CPUID policy, port I/O, writable page tables).  entry.PvEntry
                is the VcpuHost and is installed as `vcpu.arch`.
runner          attach(hv) and the vCPU threads under the scheduler.
bench           null_hypercall_roundtrip_us(), compute_mips().

Interfaces with the rest of pvhyp
---------------------------------
Uses:
  pvhyp.memory.MachineMemory   .size, .nr_frames, .buf, .host_address,
                               read/write/read_u64/write_u64
  hv.frames.alloc(DOMID_XEN)   hypervisor frames; hv.m2p_mfns
  vcpu.pv (pvhyp.pv.state.PvState)  trap table, callbacks, kernel_sp,
                               mode, segment bases, iopl, cr0_ts, cr2/cr4,
                               vcpu_info_maddr, GDT frames
  vcpu.guest_table / guest_table_user / current_table   the page-table bases
  hv.hypercalls.dispatch(HypercallContext(vcpu), nr, args) -> int
  hv.sched                     wait_to_run / slice_expired / deschedule
  hv.mmu.new_guest_cr3(vcpu, mfn) (mov to %cr3), hv.mmu.ptwr_emulate(vcpu,
                               addr, data, width) -> 0/True on success
                               (stores to the guest's own page tables)
Provides (attach(hv), from pvhyp.cpu.runner):
  hv.xen_l4_slots              {slot: L4 entry} for slots 256-271
  hv.cpu.start_domain(d) / start_vcpu(v) / stop_domain(d)
  vcpu.arch (PvEntry):         kick(), flush_tlb() (reloads CR3 from the
                               vCPU's current table, queued if another thread
                               runs it), pv_changed(PvChange), set_user_regs(regs),
                               post(fn) (what vcpu.post calls)
  attach(hv) must run before any guest L4 is validated (it fills
  hv.xen_l4_slots).
Starting a vCPU: the builder/VCPUOP_initialise leaves cpu_user_regs in
vcpu.pv.initial_user_regs (or vcpu.initial_context["user_regs"]) with the
PV state set, or calls vcpu.arch.set_user_regs(); the vCPU thread loads them
on its first run.  Without the runner: `cpu = PvEntry(memory, xen_area, vcpu,
dispatch)`; `cpu.start(entry.initial_state(rip, rsp, start_info_va, l4_mfn))`;
`cpu.run(max_insns=..., timeout_us=...)` -> ExitReason (BUDGET, KICKED,
REQUESTED, GUEST_CRASH, HYPERVISOR_ERROR with cpu.engine.error).  An engine
runs either always with an instruction budget or never (unicorn_quirks);
the vCPU threads count, with a 10 ms time slice.
"""


def attach(hv) -> None:
    from pvhyp.cpu.runner import attach as attach_runner
    attach_runner(hv)

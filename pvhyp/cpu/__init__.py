"""The CPU engine: x86-64 PV guests on a software CPU (unicorn 2.1.4).

The PV behaviour the engine calls into (entry path, trap bouncing, emulation,
writable page tables, the hypervisor's area of the address space) is
engine-independent and lives in pvhyp/pv; this package is the engine alone.

Modules, bottom up
------------------
unicorn_quirks  start-up probe of unicorn's private CPU-context fields (the
                #PF error code, QEMU's double-fault bookkeeping, the GPR
                block) and of its hook quirks; refuses to run on any other
                unicorn.  The composition root (pvhyp/host.py,
                `build_hypervisor(..., cpu=True)`) calls
                `require_supported_unicorn()`, which stops the program with one
                line; the engine itself uses `verified_offsets()`.
fastregs        register reads and writes without the binding's allocations.
native_gate     the machine-code hooks that stop uncounted runs safely (kicks,
                block budgets, exits before IN/OUT/CPUID, watchpoint steps).
engine          CpuEngine: one unicorn per vCPU, whole machine memory as its
                physical space, hooks -> a VcpuHost (pvhyp.pv.entry.PvEntry);
                run/kick/flush_tlb.  Pure mechanics, no PV policy.
watchpoints     data breakpoints (%dr0-3/%dr7) as unicorn memory hooks.
runner          `attach(hv)`, which the composition root calls: the XenArea
                (pvhyp.pv.xen_area) and `hv.cpu`, a CpuSubsystem that runs each
                vCPU on a host thread under the scheduler.
bench           null_hypercall_roundtrip_us(), compute_mips(), native_compute_mips().

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
Provides (runner.attach(hv)):
  hv.xen_l4_slots              {slot: L4 entry} for slots 256-271
  hv.cpu.start_domain(d) / start_vcpu(v) / stop_domain(d)
  vcpu.arch (PvEntry):         kick(), flush_tlb() (reloads CR3 from the
                               vCPU's current table, queued if another thread
                               runs it), pv_changed(PvChange), set_user_regs(regs),
                               post(fn) (what vcpu.post calls)
  runner.attach(hv) must run before any guest L4 is validated (it fills
  hv.xen_l4_slots).
Starting a vCPU: the builder/VCPUOP_initialise leaves cpu_user_regs in
vcpu.pv.initial_user_regs (or vcpu.initial_context["user_regs"]) with the
PV state set, or calls vcpu.arch.set_user_regs(); the vCPU thread loads them
on its first run.  Without the runner (pvhyp.pv.entry): `cpu = PvEntry(memory,
xen_area, vcpu, CpuEngine, dispatch=...)` (CpuEngine is this package's engine;
PvEntry only knows pvhyp.pv.engine_interface's Engine and VcpuHost); `cpu.start(initial_state(rip, rsp, start_info_va,
l4_mfn))`; `cpu.run(max_insns=..., timeout_us=...)` -> ExitReason (BUDGET,
KICKED, REQUESTED, GUEST_CRASH, HYPERVISOR_ERROR with cpu.engine.error).  Runs
are never counted (max_insns caps blocks); the native gate stops them
(native_gate); the vCPU threads run with a 10 ms time slice.
"""

"""The KVM engine: x86-64 PV guests at native speed on /dev/kvm (`--accel kvm`).

A second CPU engine behind pvhyp.pv.engine_interface, so every PV mechanism
(hypercalls, trap bounces, iret, upcalls, emulation, ptwr) is the same pvhyp/pv
code as on the software CPU (pvhyp/cpu). Guest code runs at CPL3 inside KVM;
each guest->hypervisor transition reaches Python through a CPL0 stub that exits
at once. Built for this machine kind's nested `kvm_pvm` (no VT-x, shadow
paging), and proved at start-up, so it also runs where KVM has EPT/NPT.

Modules, bottom up
------------------
kvm_abi   <linux/kvm.h>'s structs and ioctl numbers through cffi (checked by gcc in tests/kvm)
vm        /dev/kvm, a VM (one memory slot = the machine memory memfd), vCPUs, kicks (signal +
          immediate_exit)
area      L4 slots 262-263: the direct map, the vector/return stubs, the IDT
engine    KvmEngine: exits -> VcpuHost calls, the return to the guest (ioctls, or the return
          stub when page-table writes must be replayed)
machine   KvmMachine: a VM per domain, the replay queue fed by the PV MMU's writers, time slices;
          attach(hv, quirks) after pvhyp.cpu.runner.attach
m2p       loads from Xen's M2P slot, which kvm_pvm keeps for itself; the slot-257 alias
quirks    the start-up self-test (KvmQuirks; KvmUnavailable with one line)
choice    --accel auto|kvm|unicorn
watchpoints, bench
"""

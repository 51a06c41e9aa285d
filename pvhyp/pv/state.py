"""The PV-visible state of one vCPU (Xen's `struct pv_vcpu` plus its friends).

`vcpu.pv` is a `PvState`, created for every vCPU of every domain by the
domain-create hook that `attach(hv)` installs (pvhyp/time.py calls it). It
is a plain data object: hypercall handlers (hypercalls/traps.py, callback.py,
descriptor.py, segment.py, debugreg.py, physdev.py, vcpu.py) change it
through the mechanisms below, which apply Xen's validation; the CPU engine
reads it when it bounces a trap, delivers an event or emulates an
instruction.

Contract with the CPU engine (pvhyp/cpu)
----------------------------------------
* `trap_table`: vector -> TrapInfo, only vectors with a handler. TrapInfo
  has `.dpl` (who may `int N` it) and `.masks_events` (TI_SET_IF: the bounce
  sets evtchn_upcall_mask). Vector 2 is the NMI callback.
* `event_callback`, `failsafe_callback`, `syscall_callback`,
  `syscall32_callback`, `sysenter_callback`: Callback(address, masks_events).
* `kernel_ss` / `kernel_sp`: the stack a bounce from guest user mode uses.
* `kernel_mode` and `vcpu_info_maddr` are views of the VCPU's own fields;
  the page-table bases are the VCPU's (`pv.vcpu.guest_table`,
  `guest_table_user`, `current_table`), which only the MMU sets.
* Registers the CPU holds are loaded through `vcpu.arch`: after a change of
  the FS base, kernel or user GS base, GS user selector, debug registers,
  GDT or CR0.TS, `notify_arch(vcpu, change)` (pvhyp/pv/change.py) calls
  `vcpu.arch.pv_changed(change)` when the vCPU has an engine (`change` is
  a PvChange). The engine then loads the value from this object (it stays
  the stored copy while the vCPU is not running). When the guest itself
  changes one of them (wrmsr/wrfsbase, mov to %dr), the engine writes the
  value back here.
* `iopl` is the virtual IOPL level 0-3 (Xen stores it shifted into the
  EFLAGS position); `iopl_ok(kernel_mode)` is Xen's check for port I/O;
  with VMASST_TYPE_architectural_iopl the engine takes the IOPL field of an
  iret's RFLAGS into `iopl` and puts `iopl` into bounce-frame RFLAGS.
* `cr0_ts` is the virtual CR0.TS (fpu_taskswitch, clts); the engine raises
  #NM (vector 7) to the guest on FPU use while it is set, and clears it on
  clts.
* `dr[0..3]`, `dr6`, `dr7` (+ `dr7_emul`, the I/O breakpoints Xen emulates).
* The GDT (`gdt_frames`, `gdt_ents`) is managed in pvhyp/pv/descriptors.py;
  the LDT by the PV MMU (MMUEXT_SET_LDT), mirrored here by VCPUOP_initialise.
* `initial_user_regs`: the cpu_user_regs of VCPUOP_initialise when the
  vCPU has no engine yet; it loads them on the vCPU's first run.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from abi import errno as E
from abi import xen as X
from abi.arch_x86_xen import (
    FIRST_RESERVED_GDT_PAGE,
    XEN_LEGACY_MAX_VCPUS,
    VGCF_failsafe_disables_events,
    VGCF_in_kernel,
    VGCF_syscall_disables_events,
)
from abi.x86_regs import (
    DR7_ACTIVE_MASK,
    DR_CONTROL_RESERVED_ONE,
    DR_CONTROL_RESERVED_ZERO,
    DR_CONTROL_SHIFT,
    DR_CONTROL_SIZE,
    DR_GENERAL_DETECT,
    DR_IO,
    DR_STATUS_RESERVED_ONE,
    DR_STATUS_RESERVED_ZERO,
    X86_CR0_TS,
    X86_CR4_DE,
    X86_CR4_TSD,
    X86_DR6_DEFAULT,
    X86_DR7_DEFAULT,
    X86_EFLAGS_IF,
    X86_EFLAGS_IOPL,
    X86_EFLAGS_IOPL_BIT,
    TRAP_nmi,
)
from abi.xen import VMASST_TYPE_architectural_iopl, vcpu_info
from abi.xen_x86_64 import FLAT_KERNEL_CS, FLAT_KERNEL_SS
from pvhyp.domain import INVALID_MFN, pv_of
from pvhyp.guest_access import addr_ok, is_canonical_address
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE
from pvhyp.pv import descriptors
from pvhyp.pv.change import PvChange, notify_arch
from pvhyp.pv.descriptors import (
    GDT_ENTRIES_PER_FRAME,
    data_selector_base,
    fixup_guest_selector,
    pv_destroy_gdt,
    pv_set_gdt,
)

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain

MAX_LDT_ENTRIES = 8192
VCPU_INFO_SIZE = vcpu_info.sizeof()
VCPU_INFO_ALIGN = 8                 # alignof(vcpu_info_t): its widest member is 64-bit



class TrapInfo:
    """One virtual IDT entry (trap_info)."""

    __slots__ = ("vector", "flags", "cs", "address")

    def __init__(self, vector: int, flags: int, cs: int, address: int):
        self.vector, self.flags, self.cs, self.address = vector, flags, cs, address

    @property
    def dpl(self) -> int:
        return self.flags & 3

    @property
    def masks_events(self) -> bool:
        return bool(self.flags & 4)

    def __repr__(self) -> str:
        return f"TrapInfo({self.vector}, {self.flags:#x}, {self.cs:#x}, {self.address:#x})"


class Callback:
    """A registered guest entry point; masks_events = CALLBACKF_mask_events."""

    __slots__ = ("address", "masks_events")

    def __init__(self, address: int = 0, masks_events: bool = False):
        self.address, self.masks_events = address, masks_events

    def __repr__(self) -> str:
        return f"Callback({self.address:#x}, masks_events={self.masks_events})"


class PvState:
    """vcpu.pv: Xen's struct pv_vcpu, the PV-only part of a vCPU (see the module docstring)."""

    def __init__(self, vcpu: "VCPU"):
        self.vcpu = vcpu
        self.trap_table: dict[int, TrapInfo] = {}
        self.event_callback = Callback()
        self.failsafe_callback = Callback()
        self.syscall_callback = Callback()
        self.syscall32_callback = Callback()
        self.sysenter_callback = Callback()
        self.kernel_ss = FLAT_KERNEL_SS
        self.kernel_sp = 0
        self.gdt_frames = [0] * FIRST_RESERVED_GDT_PAGE
        self.gdt_ents = 0
        self.ldt_base = 0
        self.ldt_ents = 0
        self.fs_base = 0
        self.gs_base_kernel = 0
        self.gs_base_user = 0
        self.gs_sel_user = 0
        self.dr = [0, 0, 0, 0]
        self.dr6 = X86_DR6_DEFAULT
        self.dr7 = X86_DR7_DEFAULT
        self.dr7_emul = 0
        self.cr0_ts = False
        self.cr2 = 0
        self.cr4 = 0
        self.iopl = 0
        self.iobmp = 0                  # guest virtual address of the I/O bitmap
        self.iobmp_limit = 0            # ports covered by it
        self.nmi_pending = False
        # VCPUOP_register_vcpu_info: the guest frame holding vcpu_info, or INVALID_MFN.
        self.vcpu_info_mfn = INVALID_MFN
        # Guest virtual addresses of the runstate and time areas (0: none).
        self.runstate_guest = 0
        self.time_info_guest = 0
        self.is_initialised = False     # VCPUOP_initialise / the builder gave it a context
        self.initial_user_regs: dict | None = None   # cpu_user_regs waiting for the engine

    # --- views of the VCPU's own fields (one object for the engine to read) ---
    @property
    def kernel_mode(self) -> bool:
        return self.vcpu.kernel_mode

    @kernel_mode.setter
    def kernel_mode(self, value: bool) -> None:
        self.vcpu.kernel_mode = value

    @property
    def vcpu_info_maddr(self) -> int:
        return self.vcpu.vcpu_info_maddr

    @property
    def architectural_iopl(self) -> bool:
        return bool(self.vcpu.domain.vm_assist & (1 << VMASST_TYPE_architectural_iopl))

    def iopl_ok(self, kernel_mode: bool) -> bool:
        """Xen's iopl_ok: may the guest, in this mode, do port I/O by IOPL alone?"""
        if kernel_mode:
            cpl = 0 if self.architectural_iopl else 1
        else:
            cpl = 3
        return cpl <= self.iopl


# --- helpers shared by the handlers -------------------------------------------

@contextlib.contextmanager
def domain_lock(domain: "Domain"):
    """Xen's domain_lock for our handlers, ordered after the PV MMU's lock.

    The MMU may reach a domain's lock while holding its own (a crash from
    inside it), so whoever needs both takes the MMU's first.
    """
    with domain.hv.mmu.lock, domain.lock:
        yield


# --- trap table and callbacks (Xen: pv/callback.c) ------------------------------

def set_trap_entry(pv: PvState, vector: int, flags: int, cs: int, address: int) -> int:
    """One entry of set_trap_table; the caller stops at address == 0."""
    if not is_canonical_address(address):
        return -E.EINVAL
    pv.trap_table[vector & 0xFF] = TrapInfo(vector & 0xFF, flags & 0xFF, fixup_guest_selector(cs & 0xFFFF), address)
    return 0


def clear_trap_table(pv: PvState) -> None:
    pv.trap_table.clear()


def register_guest_nmi_callback(vcpu: "VCPU", address: int) -> int:
    if not is_canonical_address(address):
        return -E.EINVAL
    pv_of(vcpu).trap_table[TRAP_nmi] = TrapInfo(TRAP_nmi, 4, FLAT_KERNEL_CS, address)
    return 0


def unregister_guest_nmi_callback(vcpu: "VCPU") -> None:
    pv_of(vcpu).trap_table.pop(TRAP_nmi, None)


# --- segment bases, FPU, debug registers, IOPL (Xen: pv/misc-hypercalls.c) -----

SEGMENT_BASES = (PvChange.FS_BASE, PvChange.GS_BASE_USER, PvChange.GS_BASE_KERNEL)


def set_segment_base(vcpu: "VCPU", base: PvChange, value: int) -> int:
    """SEGBASE_FS / GS_USER / GS_KERNEL (one of SEGMENT_BASES): the base must be canonical."""
    if base not in SEGMENT_BASES:
        raise ValueError(f"{base} is not a segment base")
    if not is_canonical_address(value):
        return -E.EINVAL
    setattr(pv_of(vcpu), base.value, value)
    notify_arch(vcpu, base)
    return 0


def set_gs_user_selector(vcpu: "VCPU", sel: int) -> int:
    """SEGBASE_GS_USER_SEL: load the user %gs selector (RPL forced to 3 if not NUL).

    The user GS base becomes the descriptor's base; a selector whose load
    would fault is replaced by NUL (base 0), and the call still succeeds,
    as Xen does (Linux cannot handle a failure here).
    """
    sel &= 0xFFFF
    if sel > 3:
        sel |= 3
    base = data_selector_base(vcpu, sel)
    if base is None:
        sel, base = 0, 0
    pv = pv_of(vcpu)
    pv.gs_sel_user, pv.gs_base_user = sel, base
    notify_arch(vcpu, PvChange.GS_SEL_USER)
    return 0


def fpu_taskswitch(vcpu: "VCPU", set_ts: bool) -> int:
    pv_of(vcpu).cr0_ts = bool(set_ts)
    notify_arch(vcpu, PvChange.CR0_TS)
    return 0


def set_debugreg(vcpu: "VCPU", reg: int, value: int) -> int:
    """Xen's set_debugreg: -EPERM bad address/privileged bit, -EINVAL reserved bits, -ENODEV bad reg."""
    pv = pv_of(vcpu)
    if 0 <= reg <= 3:
        if not addr_ok(value):
            return -E.EPERM
        pv.dr[reg] = value
    elif reg in (4, 6):
        if reg == 4 and pv.cr4 & X86_CR4_DE:
            return -E.ENODEV
        if value >> 32:
            return -E.EINVAL
        pv.dr6 = (value & ~DR_STATUS_RESERVED_ZERO) | DR_STATUS_RESERVED_ONE
    elif reg in (5, 7):
        if reg == 5 and pv.cr4 & X86_CR4_DE:
            return -E.ENODEV
        if value >> 32:
            return -E.EINVAL
        value = (value & ~DR_CONTROL_RESERVED_ZERO) | DR_CONTROL_RESERVED_ONE
        if value & DR_GENERAL_DETECT:
            return -E.EPERM
        io_enable = 0
        if value & DR7_ACTIVE_MASK:
            for shift in range(DR_CONTROL_SHIFT, 32, DR_CONTROL_SIZE):
                if (value >> shift) & 3 == DR_IO:
                    if not pv.cr4 & X86_CR4_DE:
                        return -E.EPERM
                    io_enable |= value & (3 << ((shift - 16) >> 1))
        pv.dr7_emul = io_enable
        pv.dr7 = value & ~io_enable
    else:
        return -E.ENODEV
    notify_arch(vcpu, PvChange.DEBUGREG)
    return 0


def get_debugreg(vcpu: "VCPU", reg: int) -> int:
    """The register's value, or -ENODEV (Xen's x86emul_read_dr)."""
    pv = pv_of(vcpu)
    if 0 <= reg <= 3:
        return pv.dr[reg]
    if reg in (4, 6) and not (reg == 4 and pv.cr4 & X86_CR4_DE):
        return pv.dr6
    if reg in (5, 7) and not (reg == 5 and pv.cr4 & X86_CR4_DE):
        return pv.dr7 | pv.dr7_emul
    return -E.ENODEV


def set_iopl(vcpu: "VCPU", iopl: int) -> int:
    if iopl > 3:
        return -E.EINVAL
    pv_of(vcpu).iopl = iopl
    return 0


# --- vcpu_info placement (Xen: common/domain.c map_vcpu_info) -------------------

def map_vcpu_info(vcpu: "VCPU", caller: "VCPU", mfn: int, offset: int) -> int:
    """Move `vcpu`'s vcpu_info to guest frame `mfn` at `offset`, carrying its contents."""
    if offset > PAGE_SIZE - VCPU_INFO_SIZE or offset & (VCPU_INFO_ALIGN - 1):
        return -E.ENXIO
    pv = pv_of(vcpu)
    if pv.vcpu_info_mfn != INVALID_MFN:
        return -E.EINVAL
    if vcpu is not caller and vcpu.online:
        return -E.EINVAL
    domain = vcpu.domain
    hv = domain.hv
    if not hv.frames.owned_by(mfn, domain.domid):
        return -E.EINVAL
    if hv.mmu.hold_page(mfn, domain, writable=True):
        return -E.EINVAL
    new_maddr = (mfn << PAGE_SHIFT) + offset
    memory = hv.memory

    def move() -> None:
        old = vcpu.vcpu_info_maddr
        if old:
            memory.write(new_maddr, memory.read(old, VCPU_INFO_SIZE))
        else:
            memory.write(new_maddr, bytes(VCPU_INFO_SIZE))
            memory.buf[new_maddr + 1] = 1           # evtchn_upcall_mask: events start masked
        vcpu.vcpu_info_maddr = new_maddr
        pv.vcpu_info_mfn = mfn
        # Everything pending, so that nothing posted meanwhile is lost (Xen does the same).
        memory.write_u64(new_maddr + 8, 0xFFFF_FFFF_FFFF_FFFF)
        memory.buf[new_maddr] = 1                   # evtchn_upcall_pending

    vcpu.post(move)
    vcpu.kick()
    return 0


def unmap_vcpu_info(vcpu: "VCPU") -> None:
    pv = pv_of(vcpu)
    if pv.vcpu_info_mfn == INVALID_MFN:
        return
    vcpu.domain.hv.mmu.release_page(pv.vcpu_info_mfn, writable=True)
    pv.vcpu_info_mfn = INVALID_MFN
    vcpu.vcpu_info_maddr = legacy_vcpu_info_maddr(vcpu)


def legacy_vcpu_info_maddr(vcpu: "VCPU") -> int:
    """Where vcpu_info lives before registration: shared_info, for the first 32 vCPUs."""
    if vcpu.vcpu_id >= XEN_LEGACY_MAX_VCPUS or not vcpu.domain.shared_info_mfn:
        return 0
    return (vcpu.domain.shared_info_mfn << PAGE_SHIFT) + vcpu.vcpu_id * VCPU_INFO_SIZE


def vcpu_info_reset(vcpu: "VCPU") -> None:
    vcpu.vcpu_info_maddr = legacy_vcpu_info_maddr(vcpu)
    if vcpu.vcpu_info_maddr:
        vcpu.domain.hv.memory.buf[vcpu.vcpu_info_maddr + 1] = 1   # events masked until the guest unmasks


def local_events_need_delivery(vcpu: "VCPU") -> bool:
    """An event is pending and the guest has not masked upcalls."""
    maddr = vcpu.vcpu_info_maddr
    if not maddr:
        return False
    buf = vcpu.domain.hv.memory.buf
    return bool(buf[maddr]) and not buf[maddr + 1]


def local_event_delivery_enable(vcpu: "VCPU") -> None:
    maddr = vcpu.vcpu_info_maddr
    if maddr:
        vcpu.domain.hv.memory.buf[maddr + 1] = 0


# --- a whole context (Xen: arch_set_info_guest, PV, first initialisation) ---------

_CANONICAL_FIELDS = ("kernel_sp", "fs_base", "gs_base_kernel", "gs_base_user",
                     "event_callback_eip", "syscall_callback_eip", "failsafe_callback_eip")
# The CR4 bits a PV guest controls (Xen: PV_CR4_GUEST_MASK, less FSGSBASE and OSXSAVE);
# the rest of what it reads is pvhyp's (pvhyp/pv/emulate.py: CR4_FIXED).
CR4_GUEST_CONTROLLED = X86_CR4_TSD | X86_CR4_DE
# arch_vm_assist_valid_mask for a 64-bit PV domain (PV64_VM_ASSIST_MASK).
PV64_VM_ASSIST_MASK = (
    1 << X.VMASST_TYPE_4gb_segments
    | 1 << X.VMASST_TYPE_4gb_segments_notify
    | 1 << X.VMASST_TYPE_writable_pagetables
    | 1 << X.VMASST_TYPE_pae_extended_cr3
    | 1 << X.VMASST_TYPE_architectural_iopl
    | 1 << X.VMASST_TYPE_runstate_update_flag
    | 1 << X.VMASST_TYPE_m2p_strict
)


def _set_guest_tables(vcpu: "VCPU", kernel_mfn: int, user_mfn: int) -> int:
    """CR3 and the user CR3 of a new context, typed as L4s by the MMU when it is loaded."""
    mmu = vcpu.domain.hv.mmu
    with mmu.lock:
        rc = mmu.new_guest_cr3(vcpu, kernel_mfn)
        if rc == 0 and user_mfn:
            rc = mmu.new_user_baseptr(vcpu, user_mfn)
        return rc


def arch_set_info_guest(vcpu: "VCPU", ctxt: dict) -> int:
    """Load a vcpu_guest_context (parsed with abi) into a not yet initialised vCPU.

    The PV state lands here; the registers go to `vcpu.arch.set_user_regs(regs)`
    when the vCPU has an engine, else they wait in `initial_user_regs` for the
    engine's first run. The page tables go through the MMU (new_guest_cr3,
    new_user_baseptr).
    """
    regs = dict(ctxt["user_regs"])
    ldt_base, ldt_ents = ctxt["ldt_base"], ctxt["ldt_ents"]
    if (not is_canonical_address(regs["rip"]) or not is_canonical_address(regs["rsp"])
            or (ldt_ents and not is_canonical_address(ldt_base))
            or not all(is_canonical_address(ctxt[f]) for f in _CANONICAL_FIELDS)
            or not all(is_canonical_address(t["address"]) for t in ctxt["trap_ctxt"])
            or not addr_ok(ldt_base)):
        return -E.EINVAL
    if ldt_base & (PAGE_SIZE - 1) or ldt_ents > MAX_LDT_ENTRIES:
        return -E.EINVAL
    flags = ctxt["flags"]
    domain = vcpu.domain
    if vcpu.vcpu_id == 0 and ctxt["vm_assist"] & ~PV64_VM_ASSIST_MASK:
        return -E.EINVAL
    gdt_ents = ctxt["gdt_ents"]
    if (gdt_ents + GDT_ENTRIES_PER_FRAME - 1) // GDT_ENTRIES_PER_FRAME > len(ctxt["gdt_frames"]):
        return -E.EINVAL
    if not flags & VGCF_in_kernel and not ctxt["ctrlreg"][1]:
        return -E.EINVAL
    pv = pv_of(vcpu)
    rc = pv_set_gdt(vcpu, list(ctxt["gdt_frames"]), gdt_ents)
    if rc:
        return rc
    rc = _set_guest_tables(vcpu, ctxt["ctrlreg"][3] >> 12, ctxt["ctrlreg"][1] >> 12)
    if rc:
        pv_destroy_gdt(vcpu)
        return rc

    vcpu.kernel_mode = bool(flags & VGCF_in_kernel)
    pv.trap_table = {i: TrapInfo(i, t["flags"], fixup_guest_selector(t["cs"]), t["address"])
                     for i, t in enumerate(ctxt["trap_ctxt"]) if t["address"]}
    pv.ldt_base, pv.ldt_ents = (ldt_base, ldt_ents) if ldt_ents else (0, 0)
    domain.hv.mmu.set_ldt(vcpu, pv.ldt_base, pv.ldt_ents)
    pv.kernel_ss = fixup_guest_selector(ctxt["kernel_ss"])
    pv.kernel_sp = ctxt["kernel_sp"]
    pv.event_callback = Callback(ctxt["event_callback_eip"])
    pv.failsafe_callback = Callback(ctxt["failsafe_callback_eip"], bool(flags & VGCF_failsafe_disables_events))
    pv.syscall_callback = Callback(ctxt["syscall_callback_eip"], bool(flags & VGCF_syscall_disables_events))
    pv.fs_base, pv.gs_base_kernel, pv.gs_base_user = ctxt["fs_base"], ctxt["gs_base_kernel"], ctxt["gs_base_user"]
    pv.cr0_ts = bool(ctxt["ctrlreg"][0] & X86_CR0_TS)
    pv.cr4 = ctxt["ctrlreg"][4] & CR4_GUEST_CONTROLLED
    pv.dr, pv.dr6, pv.dr7, pv.dr7_emul = [0, 0, 0, 0], X86_DR6_DEFAULT, X86_DR7_DEFAULT, 0
    for reg in (0, 1, 2, 3, 6, 7):
        set_debugreg(vcpu, reg, ctxt["debugreg"][reg])      # a refused value keeps the default, as in Xen
    if vcpu.vcpu_id == 0:
        domain.vm_assist = ctxt["vm_assist"]

    pv.iopl = (regs["rflags"] & X86_EFLAGS_IOPL) >> X86_EFLAGS_IOPL_BIT
    regs["rflags"] = (regs["rflags"] & ~X86_EFLAGS_IOPL) | X86_EFLAGS_IF
    regs["ss"] = fixup_guest_selector(regs["ss"])
    regs["cs"] = fixup_guest_selector(regs["cs"])
    if vcpu.arch is not None:
        vcpu.arch.set_user_regs(regs)
    else:
        pv.initial_user_regs = regs
    pv.is_initialised = True
    return 0


# --- lifetime -------------------------------------------------------------------

def attach(hv) -> None:
    descriptors.attach(hv)

    def create(domain: "Domain") -> None:
        for vcpu in domain.vcpus:
            vcpu.pv = PvState(vcpu)
            if not vcpu.vcpu_info_maddr:
                vcpu_info_reset(vcpu)

    def destroy(domain: "Domain") -> None:
        for vcpu in domain.vcpus:
            if vcpu.pv is not None:
                pv_destroy_gdt(vcpu)
                unmap_vcpu_info(vcpu)

    hv.domain_create_hooks.append(create)
    hv.domain_destroy_hooks.append(destroy)

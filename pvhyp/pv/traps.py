"""PV trap bouncing: Xen's x86-64 PV exception frame, mode switches, iret.

A PV guest registers a trap table (set_trap_table) and callbacks
(callback_op); when something must reach the guest kernel, the hypervisor
builds on the guest kernel stack the frame

    rcx, r11, [ds, es, fs, gs,] [error code,] rip, cs|saved_mask<<32, rflags, rsp, ss

(lowest address first, 16-byte aligned) and resumes the guest at the
handler.  Coming from guest user mode it first switches to kernel mode: the
kernel page tables, the kernel GS base and the stack given by stack_switch.
The iret hypercall undoes it.  These rules are read from Xen's
create_bounce_frame / do_iret; the code is ours.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from abi.x86_regs import (
    X86_EFLAGS_AC,
    X86_EFLAGS_DF,
    X86_EFLAGS_IF,
    X86_EFLAGS_IOPL,
    X86_EFLAGS_IOPL_BIT,
    X86_EFLAGS_MBS,
    X86_EFLAGS_NT,
    X86_EFLAGS_RF,
    X86_EFLAGS_TF,
    X86_EFLAGS_VM,
    PFEC_user_mode,
    TRAP_page_fault,
)
from abi.xen_x86_64 import HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, VGCF_IN_SYSCALL
from pvhyp.guest_access import is_canonical_address, read_guest_virtual, write_guest_virtual
from pvhyp.pv import xen_area as L

if TYPE_CHECKING:
    from pvhyp.pv.engine_interface import Engine
    from pvhyp.pv.state import PvState

# Trap bounce flags
TBF_EXCEPTION_ERRCODE = 0x2
TBF_INTERRUPT = 0x8          # mask events on entry
TBF_FAILSAFE = 0x10

RFLAGS_CLEARED_ON_TRAP = X86_EFLAGS_AC | X86_EFLAGS_VM | X86_EFLAGS_RF | X86_EFLAGS_NT | X86_EFLAGS_TF

VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
VCPU_INFO_UPCALL_PENDING, VCPU_INFO_UPCALL_MASK, VCPU_INFO_CR2 = 0, 1, 16
_IRET_CONTEXT = struct.Struct("<9Q")    # rax r11 rcx flags rip cs rflags rsp ss

MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class GuestCrash(Exception):
    """The guest made its own state unrecoverable (Xen: domain_crash)."""


class TrapBouncer:
    """Builds bounce frames and performs mode switches for one vCPU.

    `pv` is the vCPU's PV state (pvhyp.pv.state.PvState: trap table,
    callbacks, kernel stack, mode, page-table bases, segment bases).
    """

    def __init__(self, engine: "Engine", pv: "PvState"):
        self.engine = engine
        self.pv = pv
        self.memory = engine.memory

    def _trace(self, kind: str, **fields) -> None:
        # `pvhyp run --trace`: records only while someone listens
        vcpu = self.pv.vcpu
        hv = vcpu.domain.hv
        if hv is not None and hv.trace.enabled:       # None: an engine without a hypervisor (bench)
            hv.trace.emit(kind, vcpu.domain.domid, vcpu.vcpu_id, rip=self.engine.read("rip"), **fields)

    # --- vcpu_info -----------------------------------------------------
    def _vcpu_info_byte(self, offset: int) -> int:
        if not self.pv.vcpu_info_maddr:
            return 1 if offset == VCPU_INFO_UPCALL_MASK else 0
        return self.memory.buf[self.pv.vcpu_info_maddr + offset]

    def _set_vcpu_info_byte(self, offset: int, value: int) -> None:
        if self.pv.vcpu_info_maddr:
            self.memory.buf[self.pv.vcpu_info_maddr + offset] = value

    def upcall_mask(self) -> int:
        return self._vcpu_info_byte(VCPU_INFO_UPCALL_MASK)

    def set_upcall_mask(self, masked: bool) -> None:
        self._set_vcpu_info_byte(VCPU_INFO_UPCALL_MASK, int(masked))

    def set_cr2(self, cr2: int) -> None:
        self.pv.cr2 = cr2
        if self.pv.vcpu_info_maddr:
            self.memory.write_u64(self.pv.vcpu_info_maddr + VCPU_INFO_CR2, cr2)

    # --- mode switch -----------------------------------------------------
    def toggle_guest_mode(self) -> None:
        """Kernel <-> user: page tables and GS base follow the mode (Xen's swapgs)."""
        pv, engine = self.pv, self.engine
        pv.kernel_mode = not pv.kernel_mode
        engine.write("gs_base", pv.gs_base_kernel if pv.kernel_mode else pv.gs_base_user)
        engine.set_cr3(pv.vcpu.current_table << 12)

    # --- bouncing --------------------------------------------------------
    def bounce(self, address: int, flags: int, error_code: int = 0, regs: dict | None = None) -> None:
        """Enter the guest kernel at `address` with a Xen PV exception frame.

        `regs` may carry already-read register values (rip, rsp, rflags, cs,
        ss, rcx, r11) so hot paths do not read them twice.
        """
        engine, pv = self.engine, self.pv
        names = ("rip", "rsp", "rflags", "cs", "ss", "rcx", "r11")
        if regs is None or any(n not in regs for n in names):
            regs = {**dict(zip(names, engine.read_many(names))), **(regs or {})}
        if not address:
            raise GuestCrash(f"no handler registered for a bounce (flags {flags:#x})")
        saved_cs = regs["cs"]
        if pv.kernel_mode:
            stack = regs["rsp"]
            saved_cs &= ~3       # tells the guest it interrupted kernel context
        else:
            self.toggle_guest_mode()
            stack = pv.kernel_sp
        stack &= ~0xF & MASK64
        if HYPERVISOR_VIRT_START <= stack < HYPERVISOR_VIRT_END + 60:
            raise GuestCrash(f"guest kernel stack {stack:#x} inside the hypervisor range")
        saved_mask = self.upcall_mask()
        if flags & TBF_INTERRUPT:
            self.set_upcall_mask(True)
        rflags = regs["rflags"] & ~X86_EFLAGS_IF
        if not saved_mask:
            rflags |= X86_EFLAGS_IF
        if pv.architectural_iopl:
            rflags = (rflags & ~X86_EFLAGS_IOPL) | (pv.iopl << X86_EFLAGS_IOPL_BIT)
        frame = [regs["rcx"], regs["r11"]]
        if flags & TBF_FAILSAFE:
            frame += list(engine.read_many(("ds", "es", "fs", "gs")))
        if flags & TBF_EXCEPTION_ERRCODE:
            frame.append(error_code & 0xFFFF_FFFF)
        frame += [regs["rip"], (saved_cs & 0xFFFF) | (saved_mask << 32), rflags, regs["rsp"], regs["ss"]]
        frame_va = stack - 8 * len(frame)
        if not write_guest_virtual(self.memory, engine.cr3, frame_va, struct.pack(f"<{len(frame)}Q", *frame)):
            raise GuestCrash(f"guest kernel stack {frame_va:#x} not writable for a bounce frame")
        new = {"rip": address, "rsp": frame_va, "rflags": regs["rflags"] & ~RFLAGS_CLEARED_ON_TRAP}
        # Selector writes are slow and 64-bit PV kernel and user share them.
        if regs["cs"] != L.FLAT_KERNEL_CS:
            new["cs"] = L.FLAT_KERNEL_CS
        if regs["ss"] != L.FLAT_KERNEL_SS:
            new["ss"] = L.FLAT_KERNEL_SS
        engine.write_many(new)

    def bounce_exception(self, vector: int, error_code: int = 0, cr2: int | None = None, regs=None) -> None:
        trap = self.pv.trap_table.get(vector)
        if trap is None or not trap.address:
            raise GuestCrash(f"unhandled exception vector {vector} (error code {error_code:#x})")
        if vector == TRAP_page_fault:
            if cr2 is not None:
                self.set_cr2(cr2)
            # The CPU saw CPL3 either way; the guest must see its kernel as
            # supervisor mode, as Xen rewrites the user bit.
            error_code = (error_code & ~PFEC_user_mode) | (0 if self.pv.kernel_mode else PFEC_user_mode)
        self._trace("trap", vector=vector, error_code=error_code, cr2=cr2, handler=trap.address)
        flags = TBF_INTERRUPT if trap.masks_events else 0
        if vector in VECTORS_WITH_ERROR_CODE:
            flags |= TBF_EXCEPTION_ERRCODE
        self.bounce(trap.address, flags, error_code, regs)

    def bounce_software_interrupt(self, vector: int, insn_len: int) -> None:
        """`int N` from the guest: delivered if the trap's DPL allows the current mode."""
        trap = self.pv.trap_table.get(vector)
        required = 1 if self.pv.kernel_mode else 3
        # int3/into go through DPL3 gates in Xen's own IDT: always delivered.
        if vector in (3, 4) or (trap is not None and trap.dpl >= required):
            self.bounce_exception(vector)
            return
        rip = self.engine.read("rip")
        self.engine.write("rip", rip - insn_len)
        self.bounce_exception(13, (vector << 3) | 2)

    def bounce_syscall_from_user(self) -> None:
        """`syscall` in guest user mode: to the registered syscall callback.

        The hardware would have loaded rcx/r11 with the return RIP and RFLAGS;
        the frame carries those, as on Xen.
        """
        rip, rsp, rflags, cs = self.engine.read_many(("rip", "rsp", "rflags", "cs"))
        next_rip = rip + 2
        # Xen's SYSCALL entries record their own flat selectors, not the user's: LSTAR's
        # (64-bit code) or CSTAR's (compat code), which goes to the syscall32 callback
        # when there is one (switch_to_kernel).
        descriptor = self._descriptor(cs)
        compat = descriptor is not None and not (descriptor >> 53) & 1
        frame_cs = L.FLAT_RING3_CS32 if compat else L.FLAT_USER_CS
        cb = self.pv.syscall32_callback if compat and self.pv.syscall32_callback.address else self.pv.syscall_callback
        regs = {"rip": next_rip, "rsp": rsp, "rflags": rflags, "cs": frame_cs, "ss": L.FLAT_USER_SS,
                "rcx": next_rip, "r11": rflags}
        self.bounce(cb.address, TBF_INTERRUPT if cb.masks_events else 0, regs=regs)
        self.engine.write("rflags", self.engine.read("rflags") & ~X86_EFLAGS_DF)

    def events_deliverable(self) -> bool:
        if not self.pv.vcpu_info_maddr or not self.pv.event_callback.address:
            return False
        buf = self.memory.buf
        base = self.pv.vcpu_info_maddr
        return bool(buf[base + VCPU_INFO_UPCALL_PENDING]) and not buf[base + VCPU_INFO_UPCALL_MASK]

    def deliver_pending_events(self) -> bool:
        """Upcall if vcpu_info says an event is pending and unmasked (every return to guest)."""
        if not self.events_deliverable():
            return False
        self._trace("event_upcall", handler=self.pv.event_callback.address)
        self.bounce(self.pv.event_callback.address, TBF_INTERRUPT)
        return True

    # --- descriptors -----------------------------------------------------
    def _descriptor(self, selector: int) -> int | None:
        """The GDT descriptor `selector` names (guest frames or Xen's reserved page)."""
        if selector & 4:
            return None                  # LDT selectors: no LDT support
        index = selector >> 3
        if index >= L.FIRST_RESERVED_GDT_ENTRY:
            offset = (index - L.FIRST_RESERVED_GDT_ENTRY) * 8
            if offset >= L.PAGE_SIZE:
                return None
            return self.memory.read_u64((self.engine.xen_area.reserved_gdt_mfn << 12) + offset)
        if index == 0 or index >= self.pv.gdt_ents:
            return None
        frame = self.pv.gdt_frames[index // 512]
        return self.memory.read_u64((frame << 12) + (index % 512) * 8) if frame else None

    def _usable_code_selector(self, selector: int) -> bool:
        """A present, DPL3, 64-bit code segment (unicorn cannot run compat mode)."""
        desc = self._descriptor(selector)
        if desc is None:
            return False
        present, dpl, s_bit, code = desc >> 47 & 1, desc >> 45 & 3, desc >> 44 & 1, desc >> 43 & 1
        long_mode, default_32 = desc >> 53 & 1, desc >> 54 & 1
        return bool(present and s_bit and code and dpl == 3 and long_mode and not default_32)

    def _usable_stack_selector(self, selector: int) -> bool:
        desc = self._descriptor(selector)
        if desc is None:
            return False
        present, dpl, s_bit, code, writable = (desc >> 47 & 1, desc >> 45 & 3, desc >> 44 & 1,
                                                desc >> 43 & 1, desc >> 41 & 1)
        return bool(present and s_bit and not code and writable and dpl == 3)

    def failsafe(self, regs: dict | None = None) -> None:
        cb = self.pv.failsafe_callback
        self.bounce(cb.address, TBF_FAILSAFE | (TBF_INTERRUPT if cb.masks_events else 0), regs=regs)

    # --- iret hypercall ----------------------------------------------------
    def do_iret(self) -> None:
        """HYPERVISOR_iret: restore the frame at the guest's RSP (Xen's iret_context)."""
        engine, pv = self.engine, self.pv
        rsp = engine.read("rsp")
        raw = read_guest_virtual(self.memory, engine.cr3, rsp, _IRET_CONTEXT.size)
        if raw is None:
            raise GuestCrash(f"iret frame at {rsp:#x} unreadable")
        rax, r11, rcx, flags, rip, cs, rflags, new_rsp, ss = _IRET_CONTEXT.unpack(raw)
        if not (is_canonical_address(rip) and is_canonical_address(new_rsp)):
            raise GuestCrash(f"iret to a non-canonical rip {rip:#x} / rsp {new_rsp:#x}")
        if (cs & 3) == 3 and pv.kernel_mode:
            if not pv.vcpu.guest_table_user:
                raise GuestCrash("iret to user mode without a user page table")
            self.toggle_guest_mode()
        cs, ss = (cs | 3) & 0xFFFF, (ss | 3) & 0xFFFF
        if self._usable_code_selector(cs) and self._usable_stack_selector(ss):
            engine.set_stack_and_code_selectors(cs, ss)
        else:
            # Xen's own iret to the guest would fault: the failsafe callback
            # gets the frame it could not load.
            engine.write("rax", rax)
            self.failsafe({"rip": rip, "cs": cs, "rflags": rflags, "rsp": new_rsp,
                           "ss": ss, "rcx": rcx, "r11": r11})
            return
        if pv.architectural_iopl:
            pv.iopl = (rflags & X86_EFLAGS_IOPL) >> X86_EFLAGS_IOPL_BIT
        values = {
            "rax": rax,
            "rip": rip,
            "rflags": (rflags & ~(X86_EFLAGS_IOPL | X86_EFLAGS_VM)) | X86_EFLAGS_IF | X86_EFLAGS_MBS,
            "rsp": new_rsp,
        }
        if not flags & VGCF_IN_SYSCALL:
            values["r11"] = r11
            values["rcx"] = rcx
        engine.write_many(values)
        self.set_upcall_mask(not rflags & X86_EFLAGS_IF)

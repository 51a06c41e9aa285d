"""Crash and hang diagnostics for x86 PV guests: what to look at when a kernel stops.

`report(hv, domain, console=b"")` gathers, as plain text lines:
- the guest's own words: the first Linux oops/BUG/WARNING/panic block in its
  printk output (console_io and the hvc0 ring, whichever the caller has) and
  the last lines it printed (Linux names functions there itself);
- each vCPU's RIP, CS and RSP with the instruction at RIP (capstone) and,
  given a System.map (`SymbolMap.beside(kernel)`: `pvhyp image` writes one
  decoded from the kernel's own kallsyms), the function it is in;
- the CPU engine's counters (hypercalls, traps, emulated instructions and
  page-table writes) and the last hypercalls from hv.trace.history(domid).
Reading a running vCPU's registers from another thread is a snapshot, good
enough for a hang; after a shutdown they are exact.
"""
from __future__ import annotations

import bisect
import pathlib
import re

OOPS_START = re.compile(r"(BUG: |Oops: |WARNING: |Kernel panic - |general protection fault|"
                        r"kernel BUG at |invalid opcode: |double fault)")
OOPS_BLOCK_LINES = 40
TAIL_LINES = 15
HYPERCALLS_SHOWN = 12


def guest_lines(console: bytes) -> list[str]:
    text = console.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return [line for line in text.split("\n") if line.strip()]


def first_oops(lines: list[str]) -> list[str]:
    """The first oops-like block of a Linux console log (its RIP line and call trace included)."""
    for i, line in enumerate(lines):
        if OOPS_START.search(line):
            return lines[i:i + OOPS_BLOCK_LINES]
    return []


class SymbolMap:
    """A System.map (`address type name` lines): which function holds an address."""

    def __init__(self, text: str):
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                try:
                    entries.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        entries.sort()
        self._addresses = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    @classmethod
    def beside(cls, kernel_path) -> "SymbolMap | None":
        """The System.map next to a kernel file (as `pvhyp image` leaves it), if any."""
        if not kernel_path:
            return None
        folder = pathlib.Path(kernel_path).expanduser().parent
        for candidate in sorted(folder.glob("System.map*")):
            try:
                symbols = cls(candidate.read_text(errors="replace"))
            except OSError:
                continue
            if symbols._addresses:
                return symbols
        return None

    def describe(self, address: int) -> str | None:
        """`name+0xoff/0xsize` as Linux prints it, or None outside the table."""
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0 or i + 1 >= len(self._addresses):
            return None
        start, end = self._addresses[i], self._addresses[i + 1]
        return f"{self._names[i]}+{address - start:#x}/{end - start:#x}"


def vcpu_lines(vcpu, symbols: SymbolMap | None = None) -> list[str]:
    entry = vcpu.arch
    if entry is None:
        return [f"vcpu{vcpu.vcpu_id}: never ran"]
    engine = entry.engine
    try:
        rip, cs, rsp = engine.read_many(("rip", "cs", "rsp"))
    except Exception as e:          # a closed engine: say so rather than fail the report
        return [f"vcpu{vcpu.vcpu_id}: registers unavailable ({e!r})"]
    mode = "kernel" if vcpu.kernel_mode else "user"
    where = symbols.describe(rip) if symbols is not None else None
    at = f" ({where})" if where else ""
    line = f"vcpu{vcpu.vcpu_id}: {mode} rip {rip:#x}{at} cs {cs:#x} rsp {rsp:#x}: {disassemble_at(vcpu, rip)}"
    reason = entry.crash_reason
    return [line] + ([f"vcpu{vcpu.vcpu_id}: crashed by the hypervisor: {reason}"] if reason else [])


def counters(domain) -> dict[str, int]:
    """Hypercalls, exceptions seen by the engine, privileged instructions it emulated and
    page-table writes it emulated (writable page tables), summed over vCPUs."""
    total = {"hypercall": 0, "exception": 0, "emulated": 0, "ptwr": 0}
    for vcpu in domain.vcpus:
        if vcpu.arch is not None:
            for key in total:
                total[key] += vcpu.arch.counts[key]
    return total


def last_hypercalls(hv, domid: int, count: int = HYPERCALLS_SHOWN) -> list[str]:
    calls = [r for r in hv.trace.history(domid) if r.get("kind") == "hypercall"][-count:]
    return [f"{r['name']}({', '.join(hex(a) for a in r['args'][:4])}) = {r['result']}" for r in calls]


def report(hv, domain, console: bytes = b"", symbols: SymbolMap | None = None) -> str:
    lines = guest_lines(console)
    out = [f"d{domain.domid}: shut down {domain.is_shut_down}, reason {domain.shutdown_reason}"]
    oops = first_oops(lines)
    if oops:
        out.append("guest oops (first):")
        out += ["  " + line for line in oops]
    out.append(f"guest console, last {min(TAIL_LINES, len(lines))} lines:")
    out += ["  " + line for line in lines[-TAIL_LINES:]]
    for vcpu in domain.vcpus:
        out += vcpu_lines(vcpu, symbols)
    out.append("counters: " + ", ".join(f"{k} {v}" for k, v in counters(domain).items()))
    out.append("last hypercalls:")
    out += ["  " + call for call in last_hypercalls(hv, domain.domid)]
    for record in hv.trace.history(domain.domid):
        if record.get("kind") in ("guest_crash", "hypervisor_error"):
            out.append(f"{record['kind']}: {record.get('reason') or record.get('error')}")
    return "\n".join(out)


def disassemble_at(vcpu, rip: int) -> str:
    """The instruction at guest `rip` as `vcpu` sees it (capstone), or why it cannot be read."""
    import capstone

    from pvhyp.guest_access import GuestFault, copy_from_guest
    code = b""
    for length in (15, 8, 4, 1):       # the instruction may end just before an unmapped page
        try:
            code = copy_from_guest(vcpu, rip, length)
            break
        except GuestFault:
            continue
    if not code:
        return "<not mapped>"
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for insn in md.disasm(code, rip):
        return f"{insn.mnemonic} {insn.op_str}".strip() + f" ({insn.bytes.hex()})"
    return f"<undecodable {code.hex()}>"

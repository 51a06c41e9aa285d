"""Every ABI constant is written once, in abi/: the other packages import it.

A copy that agrees today drifts tomorrow (pvhyp once had the PTE bits in six
places), so this walks the module level of hypercalls/, pvhyp/, dom0/ and
pvguest/ and fails on:

* an assignment to a name abi exports (a constant, a ``*_NAMES`` table), or a
  function of the same name as one abi defines (``pte_mfn``);
* a PTE bit or frame mask under another name (``PTE_P = 0x1``): any
  page-table-looking name whose value is one of abi.x86_pte's;
* a register bit or default under another name (``RFLAGS_IF = 0x200``,
  ``_CR0_TS = 1 << 3``): any flags-, CRn-, DRn- or EFER-looking name whose value
  is one of abi.x86_regs's;
* an exception vector or page-fault error code bit under another name
  (``VECTOR_PF = 14``, ``PFEC_WRITE = 0x2``);
* a literal negated errno (``return -38``): results come from ``abi.errno``.

Importing a name (``from abi.x86_pte import PAGE_SIZE``) is not a definition.
"""
from __future__ import annotations

import ast
import operator
import pathlib
import re
import types

from abi import errno as abi_errno
from abi import registry, x86_pte, x86_regs
from tests.core.source_kit import ROOT, python_files

PACKAGES = ("hypercalls", "pvhyp", "dom0", "pvguest")     # every package but abi itself

# Names that look like page-table bits or masks.
PTE_LOOKING = re.compile(r"PTE|^_?PAGE_|PADDR|ADDR_MASK")
PTE_VALUES = {value for name, value in vars(x86_pte).items()
              if isinstance(value, int) and (name.startswith("_PAGE_") or name == "PTE_FRAME_MASK")}
# Names that look like register bits (EFLAGS/RFLAGS, CR0-CR4, DR0-DR7, EFER).
REG_LOOKING = re.compile(r"FLAGS|^_?(X86_)?CR[0-8]_|^_?(X86_)?DR([0-7]|_)|EFER")
REG_VALUES = {value for name, value in vars(x86_regs).items()
              if registry.is_constant(name, value) and not name.endswith(("_BIT", "_SHIFT", "_SIZE"))}
# Names that look like exception vectors or page-fault error code bits.
EXC_LOOKING = re.compile(r"VECTOR|^_?TRAP_|^_?X86_EXC|PFEC")
EXC_VALUES = {value for name, value in vars(x86_regs).items()
              if registry.is_constant(name, value) and name.startswith(("TRAP_", "PFEC_"))}
ERRNO_VALUES = {value for name, value in vars(abi_errno).items()
                if name.isupper() and isinstance(value, int) and value > 1}   # -1 is every API's "no"


def abi_exports() -> tuple[set[str], set[str]]:
    """(names of abi's constants and tables, names of abi's functions)."""
    values = {entry.name for entry in registry.constants()}
    functions = set()
    for _, module in registry.header_modules():
        for name, value in vars(module).items():
            if (isinstance(value, types.FunctionType) and value.__module__ == module.__name__
                    and not name.startswith("_")):
                functions.add(name)
            elif name.endswith("_NAMES") and isinstance(value, dict):
                values.add(name)
    return values, functions


_BINOPS = {ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.LShift: operator.lshift,
           ast.RShift: operator.rshift, ast.Add: operator.add, ast.Sub: operator.sub,
           ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def int_value(node: ast.AST, known: dict[str, int]) -> int | None:
    """The value of a constant integer expression (literals, + - * // << >> | &, ~, names
    bound earlier in the module); None for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Invert, ast.USub)):
        inner = int_value(node.operand, known)
        return None if inner is None else (~inner if isinstance(node.op, ast.Invert) else -inner)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = int_value(node.left, known), int_value(node.right, known)
        if left is None or right is None:
            return None
        return _BINOPS[type(node.op)](left, right)
    return None


def assignments(tree: ast.Module):
    """(name, value node or None, line) for every module-level binding by assignment."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                yield target.id, value, node.lineno
            elif isinstance(target, ast.Tuple):
                values = value.elts if isinstance(value, ast.Tuple) else [None] * len(target.elts)
                for element, element_value in zip(target.elts, values):
                    if isinstance(element, ast.Name):
                        yield element.id, element_value, node.lineno


def negated_errno_literals(tree: ast.Module):
    """Lines of ``-N`` for an errno N, outside subscripts (``x[-2]`` is an index) and
    outside module-level assignments (a named sentinel such as ``DOMID_ORPHAN = -2``)."""
    exempt = {id(n) for sub in ast.walk(tree) if isinstance(sub, ast.Subscript)
                   for n in ast.walk(sub.slice)}
    exempt |= {id(n) for top in tree.body if isinstance(top, (ast.Assign, ast.AnnAssign))
                    for n in ast.walk(top)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int
                and node.operand.value in ERRNO_VALUES and id(node) not in exempt):
            yield node.lineno, node.operand.value


def redefinitions(root: pathlib.Path = ROOT) -> list[str]:
    abi_values, abi_functions = abi_exports()
    found = []
    for package in PACKAGES:
        for path in python_files(package, root):
            where = path.relative_to(root)
            tree = ast.parse(path.read_text(), str(path))
            known: dict[str, int] = {}
            for name, value, line in assignments(tree):
                number = None if value is None else int_value(value, known)
                if number is not None:
                    known[name] = number
                if name in abi_values:
                    found.append(f"{where}:{line}: {name} (abi defines it)")
                elif number in PTE_VALUES and PTE_LOOKING.search(name):
                    found.append(f"{where}:{line}: {name} = {number:#x} (a PTE bit of abi.x86_pte)")
                elif number in REG_VALUES and REG_LOOKING.search(name):
                    found.append(f"{where}:{line}: {name} = {number:#x} (a register bit of abi.x86_regs)")
                elif number in EXC_VALUES and EXC_LOOKING.search(name):
                    found.append(f"{where}:{line}: {name} = {number} (an exception vector or PFEC bit of abi.x86_regs)")
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name in abi_functions:
                    found.append(f"{where}:{node.lineno}: def {node.name} (abi defines it)")
            for line, number in negated_errno_literals(tree):
                found.append(f"{where}:{line}: -{number} (use -abi.errno.{abi_errno.ERRNO_NAMES[number]})")
    return found


def test_abi_constants_are_defined_only_in_abi():
    assert redefinitions() == []


def test_the_checker_sees_each_kind_of_copy(tmp_path):
    package = tmp_path / "pvhyp"
    package.mkdir()
    (package / "copies.py").write_text(
        "PAGE_SIZE = 4096\n"
        "PTE_P, PTE_RW = 0x1, 0x2\n"
        "PTE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF\n"
        "SHUTDOWN_NAMES = {}\n"
        "def pte_mfn(entry):\n    return entry >> 12\n"
        "def f(x):\n    return x[-2] if x else -38\n"
        "DOMID_ORPHAN = -2\n"            # a named sentinel, not an errno
        "PFEC_PRESENT = 0x1\n"           # a page-fault error code bit (abi.x86_regs), not a PTE bit
        "VECTOR_GP, VECTOR_PF = 13, 14\n"
        "X86_DR7_DEFAULT = 0x400\n"
        "RFLAGS_TF, RFLAGS_IF = 1 << 8, 1 << 9\n"
        "_CR0_TS = 1 << 3\n"
        "TBF_INTERRUPT = 0x8\n"          # CR0.TS's value, not a register name
        "MSR_EFER = 0xC000_0080\n")
    found = redefinitions(tmp_path)
    assert [line.split(": ", 1)[1].split(" ")[0] for line in found] == [
        "PAGE_SIZE", "PTE_P", "PTE_RW", "PTE_ADDR_MASK", "SHUTDOWN_NAMES", "PFEC_PRESENT", "VECTOR_GP",
        "VECTOR_PF", "X86_DR7_DEFAULT",
        "RFLAGS_TF", "RFLAGS_IF", "_CR0_TS", "MSR_EFER", "def", "-38"]

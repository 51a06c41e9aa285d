"""The import rules that keep the architecture honest, checked on the source."""
from __future__ import annotations

import ast
import pathlib

from tests.core.source_kit import PACKAGES, ROOT, python_files

OURS = set(PACKAGES)
# In pvhyp, the CLI and the composition root (which builds a whole host) may import everything.
MAY_IMPORT_EVERYTHING = ("cli", "host.py")


def imported_modules(path: pathlib.Path) -> set[str]:
    """The dotted names a file imports anywhere in it: `import a.b`, `from a.b import c`
    (as a.b), importlib.import_module("a.b")."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def imported_packages(path: pathlib.Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)} & OURS


def sources(package: str, exclude: tuple[str, ...] = ()):
    return python_files(package, exclude=exclude)


def violations(package: str, forbidden: set[str], exclude: tuple[str, ...] = ()) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {sorted(imported_packages(p) & forbidden)}"
            for p in sources(package, exclude) if imported_packages(p) & forbidden]


def test_abi_imports_nothing_of_ours():
    assert violations("abi", OURS - {"abi"}) == []


def test_dom0_and_pvguest_reach_the_hypervisor_only_through_a_channel():
    assert violations("dom0", {"pvhyp", "hypercalls"}) == []
    assert violations("pvguest", {"pvhyp", "hypercalls"}) == []


def test_pvhyp_reaches_handlers_only_through_its_table():
    # The CLI (pvhyp/cli) and the composition root (pvhyp/host.py) may import everything; the
    # hypervisor proper may not import handlers, nor the dom0 / guest sides.
    assert violations("pvhyp", {"hypercalls", "dom0", "pvguest"}, exclude=MAY_IMPORT_EVERYTHING) == []


def test_hypercalls_do_not_import_dom0_or_guests():
    assert violations("hypercalls", {"dom0", "pvguest"}) == []


def test_the_hypervisor_core_does_not_reach_into_its_cli():
    offenders = [str(path.relative_to(ROOT)) for path in sources("pvhyp", exclude=("cli",))
                 if any(n == "pvhyp.cli" or n.startswith("pvhyp.cli.") for n in imported_modules(path))]
    assert offenders == []


def test_pv_logic_does_not_depend_on_a_cpu_engine():
    # pvhyp/pv is the PV behaviour every engine shares (Xen's arch/x86/pv); an engine is
    # handed to PvEntry as a factory (pvhyp.pv.engine_interface), never imported by it.
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in sources("pvhyp/pv")
                 for name in sorted(imported_modules(path))
                 if name == "unicorn" or name.startswith(("unicorn.", "pvhyp.cpu", "pvhyp.kvm"))]
    assert offenders == []


def test_the_engines_do_not_depend_on_each_other():
    # pvhyp/cpu (unicorn) and pvhyp/kvm (KVM) each import abi and the pvhyp core/pv only; the
    # composition root (pvhyp/host.py) and the CLI choose between them.
    for engine, other in (("pvhyp/cpu", ("pvhyp.kvm",)), ("pvhyp/kvm", ("pvhyp.cpu", "unicorn"))):
        offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in sources(engine)
                     for name in sorted(imported_modules(path))
                     if name in other or name.startswith(tuple(f"{o}." for o in other))]
        assert offenders == [], engine

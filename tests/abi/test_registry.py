"""Nothing under abi/ escapes the registry."""

from pathlib import Path

from construct import Construct

from abi import registry


def test_every_abi_module_is_listed():
    assert registry.unlisted_modules() == []


def test_every_struct_and_constant_is_registered():
    registered_structs = {id(e.construct) for e in registry.structs()}
    registered_constants = {(e.module, e.name) for e in registry.constants()}
    for spec, module in registry.header_modules():
        for name, value in vars(module).items():
            if registry.is_struct_object(value):
                assert id(value) in registered_structs, f"{spec.module}.{name}"
            elif registry.is_constant(name, value):
                assert (spec.module, name) in registered_constants, f"{spec.module}.{name}"


def test_no_module_hides_an_unregistered_construct_kind():
    # A construct object at module level is either a registered aggregate or a
    # scalar/typedef alias; a Union/Sequence of construct's own would be missed.
    from construct import Bytes, FormatField, Renamed

    from abi.cdefs import Typedef
    allowed = (FormatField, Typedef, Renamed, Bytes)
    for spec, module in registry.header_modules():
        for name, value in vars(module).items():
            if isinstance(value, Construct) and not registry.is_struct_object(value):
                assert isinstance(value, allowed), f"{spec.module}.{name}: {type(value).__name__}"


def test_names_are_unique():
    structs = [e.name for e in registry.structs()]
    assert len(structs) == len(set(structs))
    names = [e.name for e in registry.constants()]
    duplicated = {n for n in names if names.count(n) > 1}
    assert duplicated == set(), "a constant is defined (or re-exported) in two modules"


def test_struct_lookup():
    entry = registry.struct("start_info")
    assert entry.header == "xen.h" and entry.c_type == "struct start_info"
    assert entry.size == 1168
    paths = [f.path for f in registry.fields(entry.construct)]
    assert "console.domU.mfn" in paths


def test_headers_exist_for_listed_modules():
    for spec, module in registry.header_modules():
        assert module.__doc__, spec.module
        if spec.header:
            assert spec.header in module.__doc__.splitlines()[0], spec.module


# abi.io.xs_wire is written by the xenstored engineer, in its own style.
NOT_OURS = {"abi.io.xs_wire"}


def test_every_struct_says_what_it_is_for():
    undocumented = [e.name for e in registry.structs() if e.module not in NOT_OURS and not e.docs]
    assert undocumented == []


def test_abi_needs_only_stdlib_and_construct():
    # hypothesis belongs to abi.strategies alone: the hypervisor must not need it.
    import subprocess
    import sys
    code = ("import sys, abi.registry, abi.fast\n"
            "abi.registry.structs()\n"
            "assert 'hypothesis' not in sys.modules, 'hypothesis imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_abi_is_the_package_not_the_tests_directory():
    import abi
    assert abi.__file__ and Path(abi.__file__).parent == Path(registry.__file__).parent

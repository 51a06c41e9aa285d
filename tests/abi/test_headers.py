"""abi/ against Xen 4.17's real public headers, as gcc lays them out."""

import pytest

from abi import registry

import abi_c_layout

U64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def measured():
    status = abi_c_layout.try_install_headers()
    if not abi_c_layout.headers_present():
        pytest.skip(f"Xen public headers missing in /usr/include/xen ({status}); "
                    "install Debian's libxen-dev to run the cross-check")
    return abi_c_layout.measure()


def test_every_struct_size_matches(measured):
    wrong = [(e.name, e.size, measured["structs"][e.name]["size"])
             for e in abi_c_layout.checked_structs() if e.size != measured["structs"][e.name]["size"]]
    assert wrong == [], "(name, abi size, C size)"


def test_every_field_offset_and_size_matches(measured):
    wrong = []
    for entry in abi_c_layout.checked_structs():
        c_fields = measured["structs"][entry.name]["fields"]
        for f in registry.fields(entry.construct):
            if tuple(c_fields[f.path]) != (f.offset, f.size):
                wrong.append((entry.name, f.path, (f.offset, f.size), tuple(c_fields[f.path])))
    assert wrong == [], "(struct, member, abi (offset, size), C (offset, size))"


def test_every_constant_value_matches(measured):
    wrong = [(c.name, c.value, measured["constants"][c.name])
             for c in registry.constants()
             if c.c_name is not None and (c.value & U64) != (measured["constants"][c.name] & U64)]
    assert wrong == [], "(name, abi value, C value)"


def test_unchecked_structs_say_why():
    for e in registry.structs():
        if e.header is None:
            assert e.why_unchecked, e.name


def test_unchecked_constants_say_why():
    for c in registry.constants():
        if c.c_name is None:
            assert c.why_unchecked, c.name

"""abi/io/xs_wire.py against the real header, when it is installed."""

import pathlib
import re

import pytest

from abi.io import xs_wire as wire

HEADER = pathlib.Path("/usr/include/xen/io/xs_wire.h")


def test_struct_layouts():
    assert wire.xsd_sockmsg.sizeof() == 16
    assert wire.xenstore_domain_interface.sizeof() == 2 * 1024 + 7 * 4
    raw = bytes(range(16))
    parsed = wire.xsd_sockmsg.parse(raw)
    assert parsed.type == 0x03020100 and parsed.len == 0x0F0E0D0C


def test_message_numbers_match_xen_417():
    expected = dict(XS_CONTROL=0, XS_DIRECTORY=1, XS_READ=2, XS_GET_PERMS=3, XS_WATCH=4,
                    XS_UNWATCH=5, XS_TRANSACTION_START=6, XS_TRANSACTION_END=7,
                    XS_INTRODUCE=8, XS_RELEASE=9, XS_GET_DOMAIN_PATH=10, XS_WRITE=11,
                    XS_MKDIR=12, XS_RM=13, XS_SET_PERMS=14, XS_WATCH_EVENT=15, XS_ERROR=16,
                    XS_IS_DOMAIN_INTRODUCED=17, XS_RESUME=18, XS_SET_TARGET=19,
                    XS_RESET_WATCHES=21, XS_DIRECTORY_PART=22, XS_TYPE_COUNT=23)
    for name, number in expected.items():
        assert getattr(wire, name) == number, name
    assert wire.XS_DEBUG == wire.XS_CONTROL


@pytest.mark.skipif(not HEADER.exists(), reason="libxen-dev not installed")
def test_constants_and_errors_match_installed_header():
    text = HEADER.read_text()
    for name, value in re.findall(r"#define\s+(XENSTORE_\w+)\s+(\d+)", text):
        assert getattr(wire, name) == int(value), name
    enum_body = re.search(r"enum xsd_sockmsg_type\s*{(.*?)};", text, re.S).group(1)
    names = re.findall(r"^\s*(XS_\w+)\s*(?:=\s*[^,]+)?,", enum_body, re.M)
    assert names[0] == "XS_CONTROL" and "XS_RESET_WATCHES" in names
    error_names = [n for n in re.findall(r"XSD_ERROR\((\w+)\)", text) if n != "x"]
    assert [name for _, name in wire.xsd_errors] == error_names
    import errno
    for number, name in wire.xsd_errors:
        assert getattr(errno, name) == number

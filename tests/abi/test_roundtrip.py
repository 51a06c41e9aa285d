"""parse(build(x)) == x for every registered struct, and the fast codec agrees
with construct, on values drawn by abi.strategies."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi import fast, registry
from abi.cdefs import plain
from abi.strategies import raw_bytes_for, strategy_for

STRUCTS = registry.structs()
IDS = [e.name for e in STRUCTS]
# Big structs (shared_info, vcpu_guest_context) take many draws per example.
EXAMPLES = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("entry", STRUCTS, ids=IDS)
@EXAMPLES
@given(data=st.data())
def test_construct_round_trip(entry, data):
    value = data.draw(strategy_for(entry.construct))
    built = entry.construct.build(value)
    assert len(built) == entry.size
    assert plain(entry.construct.parse(built)) == value


@pytest.mark.parametrize("entry", STRUCTS, ids=IDS)
@EXAMPLES
@given(data=st.data())
def test_fast_codec_agrees_with_construct(entry, data):
    codec = fast.codec(entry.construct)
    value = data.draw(strategy_for(entry.construct))
    built = entry.construct.build(value)
    assert codec.build(value) == built
    assert codec.parse(built) == value
    page = bytearray(entry.size + 3)
    codec.build_into(page, 3, value)
    assert bytes(page[3:]) == built
    memory = data.draw(raw_bytes_for(entry.construct))
    assert codec.parse(memory) == plain(entry.construct.parse(memory))


def test_every_struct_has_a_generated_codec():
    fallbacks = [e.name for e in STRUCTS if not isinstance(fast.codec(e.construct), fast.Codec)]
    assert fallbacks == []


@settings(max_examples=25, deadline=None)
@given(st.lists(strategy_for(registry.struct("mmu_update").construct), min_size=0, max_size=40),
       st.integers(0, 7))
def test_parse_array_matches_single_parses(entries, offset):
    mmu_update = registry.struct("mmu_update").construct
    codec = fast.codec(mmu_update)
    buf = bytes(offset) + b"".join(codec.build(e) for e in entries)
    assert codec.parse_array(buf, len(entries), offset) == entries
    assert [codec.parse(buf, offset + i * codec.size) for i in range(len(entries))] == entries


def test_parse_array_refuses_short_buffers():
    codec = fast.codec(registry.struct("mmu_update").construct)
    with pytest.raises(struct.error, match="need 32 bytes"):
        codec.parse_array(bytes(31), 2)


def test_union_parse_shows_every_member_and_builds_from_one():
    start_info = registry.struct("start_info").construct
    codec = fast.codec(start_info)
    value = plain(start_info.parse(bytes(start_info.sizeof())))
    value["console"] = {"domU": {"mfn": 0x1234, "evtchn": 7}}
    parsed = codec.parse(codec.build(value))
    assert parsed["console"]["domU"] == {"mfn": 0x1234, "evtchn": 7}
    assert parsed["console"]["dom0"] == {"info_off": 0x1234, "info_size": 0}
    assert start_info.build(value) == codec.build(value)


def test_unsupported_constructs_fall_back_to_construct_compile():
    from construct import Flag, Int32ul, Struct
    odd = Struct("on" / Flag, "n" / Int32ul)
    codec = fast.codec(odd)
    assert isinstance(codec, fast.CompiledCodec) and codec.size == 5
    assert codec.parse(codec.build({"on": True, "n": 7})) == {"on": True, "n": 7}
    assert codec.parse_array(b"\x01\x02\0\0\0" * 2, 2) == [{"on": True, "n": 2}] * 2


def test_codec_source_is_readable():
    source = fast.codec(registry.struct("mmu_update").construct).source
    assert "def from_tuple(t):" in source and "'ptr': t[0]" in source

"""`pvhyp abi` and `pvhyp bench abi`."""

import json

from pvhyp.cli import main


def test_struct_layout_shows_xen_offsets_and_notes(capsys):
    assert main(["abi", "start_info"]) == 0
    out = capsys.readouterr().out
    assert "struct start_info: 1168 bytes, xen/include/public/xen.h" in out
    assert any(line.split()[:2] == ["72", "16"] and "console" in line for line in out.splitlines())
    assert "OUT: SIF_*" in out


def test_in_out_notes_are_shown(capsys):
    assert main(["abi", "evtchn_alloc_unbound"]) == 0
    out = capsys.readouterr().out
    assert "IN:" in out and "OUT:" in out


def test_unknown_name_is_one_line_and_exit_2(capsys):
    assert main(["abi", "start_infoo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start_info" in err[0]


def test_json_lists_every_struct_and_constant(capsys):
    from abi import registry
    assert main(["abi", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["structs"]) == len(registry.structs())
    assert len(doc["constants"]) == len(registry.constants())
    start_info = next(s for s in doc["structs"] if s["name"] == "start_info")
    assert start_info["size"] == 1168
    assert {"name": "store_mfn", "offset": 56, "size": 8}.items() <= start_info["fields"][4].items()


def test_constant_and_header_lookups(capsys):
    assert main(["abi", "EVTCHNOP_send"]) == 0
    assert "EVTCHNOP_send = 4" in capsys.readouterr().out
    assert main(["abi", "io/blkif.h"]) == 0
    assert "struct blkif_request:" in capsys.readouterr().out


def test_listing_and_tour(capsys):
    assert main(["abi"]) == 0
    assert "xen/include/public/grant_table.h" in capsys.readouterr().out
    from pvhyp.cli import abi_cmd
    assert abi_cmd.tour() == 0
    assert "struct start_info" in capsys.readouterr().out


def test_bench_prints_name_value_unit_lines(capsys):
    assert main(["bench", "abi", "--seconds", "0.02"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = {line.split(":")[0] for line in lines}
    assert {"mmu_update_batch512_construct", "mmu_update_batch512_fast",
            "multicall_entry_construct", "multicall_entry_fast"} <= names
    for line in lines:
        name, rest = line.split(": ")
        value, unit = rest.split(" ", 1)
        float(value)

"""`pvhyp trace convert/render` as a user meets them: a picture from a raw trace, and each bad input
a one-line error with exit status 2."""
from __future__ import annotations

import pytest

from abi.trace_spool import SpoolWriter
from pvhyp.cli import main
from tests.trace.test_chrome_writer import disk_read_records


@pytest.fixture()
def spool(tmp_path):
    path = tmp_path / "read.jsonl"
    writer = SpoolWriter.create(str(path), 0.0)
    for rec in disk_read_records():
        writer.write(rec)
    writer.close()
    return path


def one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("pvhyp: "), err
    for word in words:
        assert word in err, err


def test_render_draws_rows_slices_flows_and_an_axis(tmp_path, spool, capsys):
    out = tmp_path / "read.svg"
    assert main(["trace", "render", str(spool), str(out), "--focus", "BLKIF_OP_READ", "--duration", "0.4"]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    for text in ("d0 Domain-0 · blkback", "d1 · vCPU 0", "BLKIF_OP_READ", "marker-end", " ms</text>"):
        assert text in svg, text
    json_out = tmp_path / "read.json"
    assert main(["trace", "convert", str(spool), str(json_out)]) == 0
    assert main(["trace", "render", str(json_out), str(tmp_path / "again.svg")]) == 0


def test_bad_inputs_are_one_line_errors(tmp_path, spool, capsys):
    one_line_error(capsys, ["trace", "render", str(tmp_path / "missing.json"), str(tmp_path / "x.svg")],
                   "no such trace file")
    one_line_error(capsys, ["trace", "render", str(spool), str(tmp_path / "x.png")], ".svg")
    one_line_error(capsys, ["trace", "render", str(spool), str(tmp_path / "x.svg"), "--focus", "NOPE"], "NOPE")
    one_line_error(capsys, ["trace", "render", str(spool), str(tmp_path / "x.svg"), "--width", "5"], "--width")
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope")
    one_line_error(capsys, ["trace", "render", str(not_json), str(tmp_path / "x.svg")], "not JSON")
    nan = tmp_path / "nan.json"
    nan.write_text('{"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": NaN, "dur": 1}]}')
    one_line_error(capsys, ["trace", "render", str(nan), str(tmp_path / "x.svg")], "not JSON")
    one_line_error(capsys, ["trace", "convert", str(not_json), str(tmp_path / "x.json")], "not a raw pvhyp trace")
    one_line_error(capsys, ["trace", "convert", str(spool), str(tmp_path / "x.txt")], ".json")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--kernel", "k", "--trace", "t.json", "--trace-limit", "0"])
    assert exit_.value.code == 2

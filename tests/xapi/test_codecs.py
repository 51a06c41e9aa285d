"""The sans-IO HTTP engine and the two RPC codecs against hostile bytes (hypothesis)."""
from __future__ import annotations

import json
import xmlrpc.client

from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.xapi import http
from dom0.xapi.errors import ApiError
from dom0.xapi.wire import Call, Timestamp, WireError, decode_jsonrpc, decode_xmlrpc, encode_jsonrpc, encode_xmlrpc


def requests_of(data: bytes, split: int = 7) -> list:
    """Feed `data` in pieces; every request out, or the HttpError that ended it."""
    reader = http.RequestReader()
    out = []
    for i in range(0, len(data), split):
        reader.feed(data[i:i + split])
        while True:
            try:
                request = reader.next_request()
            except http.HttpError as e:
                return out + [e]
            if request is None:
                break
            out.append(request)
    return out


@given(st.binary(max_size=4096), st.integers(1, 64))
@settings(max_examples=150, deadline=None)
def test_http_reader_takes_any_bytes(data, split):
    for item in requests_of(data, split):
        assert isinstance(item, (http.Request, http.HttpError))


HEAD = st.sampled_from([b"GET", b"POST", b"HEAD", b"X", b"", b"G\x00T"])
TARGET = st.sampled_from([b"/", b"/jsonrpc", b"/console?ref=OpaqueRef:1&session_id=a", b"", b"\xff"])
HEADER = st.tuples(st.sampled_from([b"Content-Length", b"Connection", b"Host", b"Bad Name", b""]),
                   st.sampled_from([b"0", b"5", b"close", b"-3", b"1" * 30, b"keep-alive", b""]))


@given(HEAD, TARGET, st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9"]), st.lists(HEADER, max_size=6),
       st.binary(max_size=64))
@settings(max_examples=150, deadline=None)
def test_http_reader_structured_hostility(method, target, version, headers, body):
    raw = b" ".join([method, target, version]) + b"\r\n"
    raw += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    for item in requests_of(raw):
        if isinstance(item, http.HttpError):
            assert 400 <= item.status < 600
        else:
            assert item.method and item.version in ("HTTP/1.1", "HTTP/1.0")


def test_http_pipelined_requests_and_keep_alive():
    raw = (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /x?a=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
           b"GET / HTTP/1.1\r\nConnection: close\r\nUpgrade: websocket\r\n\r\n")
    first, second, third = requests_of(raw, split=5)
    assert (first.method, first.body, first.keep_alive) == ("POST", b"abc", True)
    assert (second.path, second.query, second.keep_alive) == ("/x", {"a": "1"}, True)
    assert third.keep_alive is False and third.upgrade_websocket


def test_http_bounds():
    assert requests_of(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (http.MAX_BODY + 1))[0].status == 413
    assert requests_of(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000, split=4096)[0].status == 431
    assert requests_of(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")[0].status == 501
    assert http.response(200, b"hi", [("X-Evil", "a\r\nSet-Cookie: x")]).count(b"Set-Cookie") == 0


@given(st.binary(max_size=2048))
@settings(max_examples=150, deadline=None)
def test_decoders_take_any_bytes(data):
    for decode in (decode_xmlrpc, decode_jsonrpc):
        try:
            call = decode(data)
        except WireError:
            continue
        assert isinstance(call.method, str) and isinstance(call.params, list)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=20)


@given(st.dictionaries(st.sampled_from(["method", "params", "id", "jsonrpc"]), JSON_VALUES))
@settings(max_examples=150, deadline=None)
def test_jsonrpc_decoder_shapes(request):
    try:
        call = decode_jsonrpc(json.dumps(request).encode())
    except WireError:
        return
    assert call.id is not None and call.version in ("1.0", "2.0")


def test_xmlrpc_conventions():
    reply = xmlrpc.client.loads(encode_xmlrpc({"n": 1 << 40, "t": Timestamp(0), "v": None, "b": True}))[0][0]
    assert reply == {"Status": "Success", "Value": {"n": str(1 << 40), "t": xmlrpc.client.DateTime(
        "19700101T00:00:00Z"), "v": "", "b": True}}
    failure = xmlrpc.client.loads(encode_xmlrpc(error=ApiError("HANDLE_INVALID", "VM", "OpaqueRef:x")))[0][0]
    assert failure == {"Status": "Failure", "ErrorDescription": ["HANDLE_INVALID", "VM", "OpaqueRef:x"]}
    call = decode_xmlrpc(xmlrpc.client.dumps(("OpaqueRef:s", "5"), "VM.get_all").encode())
    assert (call.method, call.params) == ("VM.get_all", ["OpaqueRef:s", "5"])


def test_jsonrpc_conventions():
    v1 = Call("m", [], "a", "1.0")
    v2 = Call("m", [], 3, "2.0")
    assert json.loads(encode_jsonrpc(v1, result=5)) == {"result": 5, "error": None, "id": "a"}
    assert json.loads(encode_jsonrpc(v1, error=ApiError("X", 1))) == {"result": None, "error": ["X", "1"], "id": "a"}
    assert json.loads(encode_jsonrpc(v2, result=None)) == {"jsonrpc": "2.0", "result": "", "id": 3}
    assert json.loads(encode_jsonrpc(v2, error=ApiError("SESSION_INVALID", "r"))) == {
        "jsonrpc": "2.0", "error": {"code": 1, "message": "SESSION_INVALID", "data": ["r"]}, "id": 3}


def test_listen_text_edge_cases():
    from dom0.xapi.server import parse_listen
    for bad in ("127.0.0.1:", ":80", "1.2.3:4", "[::1]", "127.0.0.1:-1"):
        try:
            parse_listen(bad)
        except ValueError as e:
            assert "\n" not in str(e)
        else:
            raise AssertionError(bad)

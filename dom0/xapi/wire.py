"""The two wire formats of XenAPI calls, as xapi speaks them (doc/content/xen-api/wire-protocol.md).

Rules (every request body is hostile; nothing here raises anything but WireError):
* XML-RPC at `/`: <methodCall> in; out `{"Status": "Success", "Value": v}` or
  `{"Status": "Failure", "ErrorDescription": [CODE, params...]}`. XAPI's `int` is 64 bits
  and goes as a string of decimal digits (never <i4>); `void` is the empty string;
  datetimes are <dateTime.iso8601> in UTC ("20261205T21:56:24Z").
* JSON-RPC at `/jsonrpc`: a request object {"method", "params" (array), "id" (string or
  integer, never null: xapi takes no notifications)}; "jsonrpc": "2.0" asks for a 2.0
  answer ({"jsonrpc", "result"|"error", "id"}, error = {"code": 1, "message": CODE,
  "data": [params]}), else 1.0 ({"result", "error": null | [CODE, params...], "id"}).
  Ints stay JSON numbers, datetimes strings.
* A body that is not a call of the format (not XML/JSON, wrong shape, nested past the
  parser's limit) is a WireError: the server answers it with HTTP 400.
"""
from __future__ import annotations

import json
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from dom0.xapi.errors import ApiError


class WireError(Exception):
    """The body is not a call of its format (one line: what is wrong)."""


class Timestamp(float):
    """A XAPI `datetime` (seconds since the epoch): <dateTime.iso8601> in XML-RPC, a string in JSON."""

    def iso(self) -> str:
        return time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(self))


@dataclass
class Call:
    method: str
    params: list[Any]
    id: Any = None              # JSON-RPC's id
    version: str = "xml"        # "xml", "1.0" or "2.0"


# --- XML-RPC ---

def decode_xmlrpc(body: bytes) -> Call:
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=True)
    except Exception as e:      # expat, the unmarshaller's own errors, bad numbers: all one answer
        raise WireError(f"not an XML-RPC call: {type(e).__name__}") from None
    if not isinstance(method, str) or not method:
        raise WireError("not an XML-RPC call: no methodName")
    return Call(method, list(_from_xmlrpc(p) for p in params))


def _from_xmlrpc(value: Any) -> Any:
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


def _to_xmlrpc(value: Any) -> Any:
    """XAPI's XML-RPC conventions: ints as strings, None (void) as "", datetimes as DateTime."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Timestamp):
        return xmlrpc.client.DateTime(value.iso())
    if isinstance(value, int):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): _to_xmlrpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_xmlrpc(v) for v in value]
    return value


def encode_xmlrpc(result: Any = None, error: ApiError | None = None) -> bytes:
    reply = ({"Status": "Failure", "ErrorDescription": error.description} if error is not None
             else {"Status": "Success", "Value": _to_xmlrpc(result)})
    text = xmlrpc.client.dumps((reply,), methodresponse=True, allow_none=True, encoding="utf-8")
    return text.encode("utf-8", "replace")      # a lone surrogate echoed back is never an exception


# --- JSON-RPC ---

def decode_jsonrpc(body: bytes) -> Call:
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        raise WireError("not a JSON-RPC call: not JSON") from None
    if not isinstance(request, dict):
        raise WireError("not a JSON-RPC call: not an object")
    method, params = request.get("method"), request.get("params", [])
    call_id = request.get("id")
    if not isinstance(method, str) or not method:
        raise WireError('not a JSON-RPC call: "method" must be a string')
    if not isinstance(params, list):
        raise WireError('not a JSON-RPC call: "params" must be an array')
    if call_id is None or isinstance(call_id, bool) or not isinstance(call_id, (str, int)):
        raise WireError('not a JSON-RPC call: "id" must be a string or an integer (no notifications)')
    version = "2.0" if request.get("jsonrpc") == "2.0" else "1.0"
    return Call(method, params, call_id, version)


def _to_json(value: Any) -> Any:
    if isinstance(value, Timestamp):
        return value.iso()
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return "" if value is None else value


def encode_jsonrpc(call: Call, result: Any = None, error: ApiError | None = None) -> bytes:
    if call.version == "2.0":
        reply: dict[str, Any] = {"jsonrpc": "2.0"}
        if error is not None:
            reply["error"] = {"code": 1, "message": error.code, "data": error.params}
        else:
            reply["result"] = _to_json(result)
    else:
        reply = ({"result": None, "error": error.description} if error is not None
                 else {"result": _to_json(result), "error": None})
    reply["id"] = call.id
    return json.dumps(reply).encode()

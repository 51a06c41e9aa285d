"""XAPI's error codes (ocaml/xapi-consts/api_errors.ml) and their parameters (datamodel_errors.ml).

A call fails with ApiError(CODE, *params); the wire codecs turn it into XML-RPC's
{"Status": "Failure", "ErrorDescription": [CODE, params...]} or JSON-RPC's error. Every
parameter is a string on the wire, as xapi sends them.
"""
from __future__ import annotations

MESSAGE_METHOD_UNKNOWN = "MESSAGE_METHOD_UNKNOWN"                   # [method]
MESSAGE_PARAMETER_COUNT_MISMATCH = "MESSAGE_PARAMETER_COUNT_MISMATCH"   # [method, expected, received]
HANDLE_INVALID = "HANDLE_INVALID"                                   # [class, handle]
UUID_INVALID = "UUID_INVALID"                                       # [type, uuid]
SESSION_AUTHENTICATION_FAILED = "SESSION_AUTHENTICATION_FAILED"     # [user, message] as xapi sends
SESSION_INVALID = "SESSION_INVALID"                                 # [handle]
SESSION_NOT_REGISTERED = "SESSION_NOT_REGISTERED"                   # [handle]
VM_BAD_POWER_STATE = "VM_BAD_POWER_STATE"                           # [vm, expected, actual]
VM_IS_TEMPLATE = "VM_IS_TEMPLATE"                                   # [vm]
FIELD_TYPE_ERROR = "FIELD_TYPE_ERROR"                               # [field]
OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"                     # [reason]
INTERNAL_ERROR = "INTERNAL_ERROR"                                   # [message]
INVALID_VALUE = "INVALID_VALUE"                                     # [field, value]
EVENT_FROM_TOKEN_PARSE_FAILURE = "EVENT_FROM_TOKEN_PARSE_FAILURE"   # [token]
EVENT_SUBSCRIPTION_PARSE_FAILURE = "EVENT_SUBSCRIPTION_PARSE_FAILURE"  # [subscription]
RBAC_PERMISSION_DENIED = "RBAC_PERMISSION_DENIED"                   # [permission, message]
NOT_IMPLEMENTED = "NOT_IMPLEMENTED"                                 # [function]


class ApiError(Exception):
    """A XAPI failure: `code` and its parameters (strings on the wire)."""

    def __init__(self, code: str, *params: object):
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self) -> list[str]:
        """XML-RPC's ErrorDescription (JSON-RPC 1.0's error): [CODE, params...]."""
        return [self.code, *self.params]

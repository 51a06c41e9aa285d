"""pvhyp's toy split device ("toy", lab 6 of docs/lessons): one granted page, two counters, a text.

Not a Xen protocol: the smallest device that still has every part of one
(xenstore keys, the xenbus handshake, a granted page, an event channel each
way). The frontend writes a text and its length into the shared page, bumps
`req_prod` and kicks; the backend upper-cases the text in place, sets
`rsp_prod` to the `req_prod` it answered and kicks back.

Frontend keys (device/toy/N): `page-ref` (grant of the shared page to the
backend), `event-channel` (an unbound port for the backend). Backend key
(backend/toy/D/N): `max-length`.
"""
from __future__ import annotations

from construct import Bytes, Struct

from abi.cdefs import uint32_t

TOY_DEVICE_KIND = "toy"         # the xenstore device kind: device/toy/N, backend/toy/D/N
TOY_TEXT_OFFSET = 64            # where the text starts in the shared page
TOY_MAX_LENGTH = 4096 - TOY_TEXT_OFFSET

toy_shared_page = Struct(
    "req_prod" / uint32_t * "frontend: requests made so far (bump after writing text and length)",
    "rsp_prod" / uint32_t * "backend: the req_prod it last answered",
    "length" / uint32_t * "frontend: bytes of text (at most max-length)",
    "__pad" / Bytes(TOY_TEXT_OFFSET - 12),
    "text" / Bytes(TOY_MAX_LENGTH) * "the text; upper-cased in place by the backend",
)
toy_shared_page.docs = "The one page a toy frontend grants its backend."
TOY_REQ_PROD_OFFSET = 0
TOY_RSP_PROD_OFFSET = 4
TOY_LENGTH_OFFSET = 8

"""XenAPI (XAPI) server in dom0: HTTP on dom0's loop, XML-RPC at `/`, JSON-RPC at `/jsonrpc`.

`http` (sans-IO HTTP/1.1), `wire` (the two RPC codecs), `errors` (XAPI's error codes),
`session` (logins), `store` (halted VMs and templates: xl configs), `model` (the classes
and the one table of messages over the toolstack), `events` (event.from/next), `server`
(the sockets on the loop). docs/xenapi.md maps every call onto the toolstack.
"""

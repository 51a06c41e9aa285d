"""`pvhyp up`'s part of the XenAPI: what dom0 should serve, the credentials, and the lines it prints.

Before hostd starts: `<run dir>/xapi.json` (where to listen, the VM directory) and a new
`<run dir>/xapi-credentials` (0600, user root and a random password, printed once here).
After dom0 is up: the URL dom0 serves at (`xapi.url`), or a line saying it is not served.
"""
from __future__ import annotations

import json
import os

from dom0.rundir import RunDir
from dom0.xapi.server import parse_listen
from dom0.xapi.service import CONFIG_FILE, URL_FILE
from dom0.xapi.session import CREDENTIALS_FILE, USER, new_credentials
from pvhyp.cli.errors import UserError


def prepare(run_dir: RunDir, api: str, vm_dir: str | None) -> str | None:
    """Write the settings and credentials; returns the password (None: --api off)."""
    run_dir.remove(CONFIG_FILE)
    if api == "off":
        return None
    try:
        parse_listen(api)
    except ValueError as e:
        raise UserError(str(e)) from None
    if vm_dir is not None and not os.path.isdir(vm_dir):
        raise UserError(f"--vm-dir {vm_dir}: no such directory")
    settings = {"listen": api, "vm_dir": os.path.abspath(vm_dir) if vm_dir else None,
                "fallback_port": api == "127.0.0.1:8080"}
    run_dir.write_atomically(CONFIG_FILE, json.dumps(settings).encode())
    password, text = new_credentials()
    run_dir.write_atomically(CREDENTIALS_FILE, text)
    return password


def report(run_dir: RunDir, password: str | None) -> None:
    if password is None:
        return
    url = (run_dir.read_small(URL_FILE) or b"").decode(errors="replace").strip()
    if not url:
        print(f"  api:       not served (see {run_dir.path}/dom0.log)")
        return
    tls = " (TLS, self-signed certificate: not loopback)" if url.startswith("https:") else ""
    print(f"  api:       {url}/ (XenAPI XML-RPC), {url}/jsonrpc, web console {url}/{tls}")
    print(f"  login:     {run_dir.join(CREDENTIALS_FILE)} (user {USER}, password {password}; shown once)")

"""dom0's XenAPI service: what `pvhyp up` asked for (`<run dir>/xapi.json`), started on dom0's loop.

`pvhyp up` writes xapi.json ({"listen": "ADDR:PORT", "vm_dir": DIR}) and the credentials
file before dom0 starts; without xapi.json (`--api off`, or a dom0 a test builds) there is
no API. dom0 writes the URL it serves at into `<run dir>/xapi.url` for `pvhyp up` to print.
"""
from __future__ import annotations

import json
import logging
import os

from dom0.rundir import open_nofollow
from dom0.xapi.model import Api
from dom0.xapi.server import ListenError, XapiServer, parse_listen
from dom0.xapi.session import CREDENTIALS_FILE, Sessions
from dom0.xapi.store import VmStore
from pvguest.spawn import CODE_ROOT

log = logging.getLogger("dom0.xapi")
CONFIG_FILE = "xapi.json"
URL_FILE = "xapi.url"
IMAGE_CACHE = os.path.expanduser("~/.cache/pvhyp")
EXAMPLES = os.path.join(CODE_ROOT, "examples")
TEMPLATE_EXAMPLES = ("debian.cfg", "debian-disk.cfg")     # templates of a new VM store, once built


def start_xapi(run_dir: str, toolstack, loop, add_reader, remove_reader) -> XapiServer | None:
    try:
        fd = open_nofollow(os.path.join(run_dir, CONFIG_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd) as f:
            settings = json.loads(f.read(65536))
        host, port = parse_listen(str(settings.get("listen", "127.0.0.1:8080")))
    except (ValueError, AttributeError, OSError) as e:
        log.error("XenAPI: %s: %s (no API)", CONFIG_FILE, e)
        return None
    store = VmStore(str(settings.get("vm_dir") or os.path.join(run_dir, "vms")))
    store.seed([os.path.join(EXAMPLES, name) for name in TEMPLATE_EXAMPLES])
    sessions = Sessions(os.path.join(run_dir, CREDENTIALS_FILE))
    server: XapiServer | None = None
    api = Api(toolstack, store, sessions, lambda: server.url if server else "",
              image_cache=IMAGE_CACHE if os.path.isdir(IMAGE_CACHE) else None)
    web = None
    try:
        from dom0.webui.app import WebApp
        web = WebApp(add_reader, remove_reader, sessions, api)
    except ImportError:
        pass
    try:
        server = XapiServer(api, loop, (host, port), web=web, tls_dir=run_dir,
                            fallback_port=bool(settings.get("fallback_port", True)))
    except (ListenError, OSError) as e:
        log.error("XenAPI: %s", e)
        return None
    fd = open_nofollow(os.path.join(run_dir, URL_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, (server.url + "\n").encode())
    os.close(fd)
    return server

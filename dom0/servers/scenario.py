"""The three servers: which example config each clones, its role, and the config it boots with.

A server's clone (dom0.images.clone: a qcow2 overlay on the template's disk, its own MAC and
UUID) lives in STATE_DIR as NAME.cfg and NAME-xvda.qcow2 and is made once: later runs boot the
same clone, so what was written to it (batagor's share) is still there. The host port of the
vif's forward is chosen per run, so it is not in the clone's config but added when the domain is
created (the same vif, `forward=tcp:127.0.0.1:HOST:GUEST` appended).
"""
from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

from dom0.images import clone as clones
from dom0.images import servers as template
from dom0.toolstack.config import ConfigError, parse_assignments, parse_config

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "servers"
STATE_DIR = template.DEFAULT_DIR.parent / "servers"
BRIDGE = "servers"
TEMPLATE_STAMP = "template.json"     # which build of the template the clones are overlays of


@dataclass(frozen=True)
class Server:
    name: str
    role: str

    @property
    def service(self) -> template.Role:
        return template.ROLES[self.role]

    @property
    def example(self) -> pathlib.Path:
        return EXAMPLES / f"{self.name}.cfg"


SERVERS = (Server("batagor", "smb"), Server("mieayam", "print"), Server("ketoprak", "web"))


class ScenarioError(Exception):
    """One line for the user."""


def clone_config(server: Server, state_dir: pathlib.Path) -> pathlib.Path:
    return state_dir / f"{server.name}.cfg"


def ensure_clone(server: Server, state_dir: pathlib.Path) -> tuple[pathlib.Path, bool]:
    """The server's clone config, made from its example now if it has none; (path, made now)."""
    path = clone_config(server, state_dir)
    if path.exists():
        return path, False
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        clones.clone(str(server.example), server.name, out=str(path))
    except clones.CloneError as e:
        raise ScenarioError(f"cloning {server.name}: {e}") from None
    return path, True


def boot_config(path: pathlib.Path, server: Server, host_port: int) -> str:
    """The clone's config plus the forward of this run's host port to the server's port."""
    try:
        text = path.read_text()
        settings = parse_assignments(text, str(path))
    except (OSError, ConfigError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    vifs = settings.get("vif", ([], 0))[0]
    vifs = vifs if isinstance(vifs, list) else [vifs]
    if len(vifs) != 1 or not isinstance(vifs[0], str):
        raise ScenarioError(f"{path}: a server has one vif (found {len(vifs)})")
    vif = f"{vifs[0]}, forward=tcp:127.0.0.1:{host_port}:{server.service.port}"
    return text.rstrip("\n") + "\n" + f"vif = {clones.xl_value([vif])}\n"


def memory_mb(path: pathlib.Path) -> int:
    """The memory= of a clone's config (MiB)."""
    try:
        return parse_config(path.read_text(), str(path)).memory
    except (OSError, ConfigError) as e:
        raise ScenarioError(f"{path}: {e}") from None


def template_stamp(image: str) -> dict:
    """What identifies one build of the template disk: a rebuild changes it."""
    st = os.stat(image)
    return {"image": image, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def check_template(state_dir: pathlib.Path, image: str) -> None:
    """The clones in `state_dir` are overlays of this very build of the template (else ScenarioError:
    an overlay over a rebuilt backing file reads garbage); a state dir with no clones records it."""
    stamp, path = template_stamp(image), state_dir / TEMPLATE_STAMP
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError):
        recorded = {}
    if recorded is None or not any(clone_config(s, state_dir).exists() for s in SERVERS):
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stamp))
        return
    if recorded != stamp:
        raise ScenarioError(f"the servers template was rebuilt after the clones in {state_dir} were made "
                            f"(they would read garbage): --fresh clones it again (batagor's share starts empty)")


def remove_clones(state_dir: pathlib.Path) -> None:
    """Forget every server's clone (their disks too): the next run clones the template again."""
    for path in [state_dir / TEMPLATE_STAMP] + [p for server in SERVERS
                                                for p in (clone_config(server, state_dir),
                                                          state_dir / f"{server.name}-xvda.qcow2")]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

"""Ask gcc, with Xen's real public headers, for the layout abi/ claims.

Builds one C program that includes every header the registry names and
prints, as JSON, sizeof/offsetof of each registered struct and member and the
value of each registered constant; compiles it with gcc and runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from abi import registry

INCLUDE_ROOT = Path("/usr/include")
XEN_PUBLIC = INCLUDE_ROOT / "xen"


def headers_present() -> bool:
    return (XEN_PUBLIC / "xen.h").is_file() and (XEN_PUBLIC / "domctl.h").is_file()


def can_compile() -> bool:
    return headers_present() and shutil.which("gcc") is not None


def try_install_headers() -> str:
    """Install Debian's libxen-dev if we can; returns what happened."""
    if headers_present():
        return "present"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "libxen-dev"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "libxen-dev"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        if headers_present():
            return "installed"
    return "apt-get install libxen-dev failed"


def checked_structs():
    """Structs with a Xen header to check against (not the architectural ones)."""
    return [e for e in registry.structs() if e.checked]


def _c_string(text: str) -> str:
    return json.dumps(text)


def headers_to_include() -> list[str]:
    # The registry's headers, in its (include) order; xen.h first pulls arch-x86.
    seen, ordered = set(), ["xen.h"]
    for spec, _ in registry.header_modules():
        if spec.header:
            ordered.append(spec.header)
    return [h for h in ordered if not (h in seen or seen.add(h))]


def includes() -> list[str]:
    """The preprocessor part of the program: every registered header."""
    return [
        "#define __XEN_TOOLS__ 1",  # domctl.h / sysctl.h are tools-only
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <stdio.h>",
        # errno.h hides EINTR and ERESTART from everyone but Xen itself, and a
        # hypervisor is Xen: expand its X-macro list with __XEN__ defined, as
        # the same XEN_<NAME> enumerators, then mark the header as included.
        "#define __XEN__ 1",
        "#define XEN_ERRNO(name, value) enum { XEN_##name = value };",
        "#include <xen/errno.h>",
        "#undef __XEN__",
        "#define __XEN_PUBLIC_ERRNO_H__",
        *(f"#include <xen/{h}>" for h in headers_to_include()),
    ]


def program() -> str:
    lines = [
        *includes(),
        "int main(void) {",
        '  printf("{\\"structs\\": {\\n");',
    ]
    first = True
    for entry in checked_structs():
        t = entry.c_type
        sep = "" if first else ","
        first = False
        lines.append(f'  printf("{sep}%s: {{\\"size\\": %zu, \\"fields\\": {{", '
                     f"{_c_string(_c_string(entry.name))}, sizeof({t}));")
        for i, f in enumerate(registry.fields(entry.construct)):
            fsep = "" if i == 0 else ","
            lines.append(
                f'  printf("{fsep}%s: [%zu, %zu]", {_c_string(_c_string(f.path))}, '
                f"offsetof({t}, {f.path}), sizeof((({t} *)0)->{f.path}));")
        lines.append('  printf("}}\\n");')
    lines.append('  printf("}, \\"constants\\": {\\n");')
    first = True
    for c in registry.constants():
        if c.c_name is None:
            continue
        sep = "" if first else ","
        first = False
        lines.append(f'  printf("{sep}%s: %lld\\n", {_c_string(_c_string(c.name))}, '
                     f"(long long)({c.c_name}));")
    lines += ['  printf("}}\\n");', "  return 0;", "}"]
    return "\n".join(lines) + "\n"


_OBJECT_MACRO = re.compile(r"^\s*#\s*define\s+(\w+)(?:\s|$)", re.MULTILINE)


def header_macros() -> dict[str, set[str]]:
    """{header: object-like macros it defines}, as the preprocessor really
    sees them (a #define inside a comment or a dead #if is not one)."""
    with tempfile.TemporaryDirectory(prefix="pvhyp-abi-") as tmp:
        src = Path(tmp, "macros.c")
        src.write_text("\n".join(includes()) + "\n")
        ran = subprocess.run(["gcc", "-std=gnu11", "-w", "-dM", "-E", "-I", str(INCLUDE_ROOT), str(src)],
                             capture_output=True, text=True, timeout=120, check=True)
    live = set(_OBJECT_MACRO.findall(ran.stdout))
    return {h: set(_OBJECT_MACRO.findall((XEN_PUBLIC / h).read_text())) & live
            for h in headers_to_include()}


def measure() -> dict:
    """{"structs": {name: {"size": n, "fields": {path: [offset, size]}}},
    "constants": {name: value}} as gcc sees Xen's headers."""
    with tempfile.TemporaryDirectory(prefix="pvhyp-abi-") as tmp:
        src = Path(tmp, "layout.c")
        exe = Path(tmp, "layout")
        src.write_text(program())
        built = subprocess.run(
            ["gcc", "-std=gnu11", "-w", "-I", str(INCLUDE_ROOT), "-o", str(exe), str(src)],
            capture_output=True, text=True, timeout=300)
        if built.returncode != 0:
            errors = [l for l in built.stderr.splitlines() if "error" in l][:40]
            raise AssertionError("gcc rejected abi/'s names against Xen's headers:\n"
                                 + "\n".join(errors))
        ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(ran.stdout)

"""pvhyp/kvm/kvm_abi.py against <linux/kvm.h> (Debian's linux-libc-dev), as gcc sees it:
every checked struct's size and member offsets, kvm_run's members, every ioctl number."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pvhyp.kvm import kvm_abi as K

HEADER = Path("/usr/include/linux/kvm.h")
pytestmark = pytest.mark.skipif(not HEADER.is_file() or shutil.which("gcc") is None,
                                reason="needs gcc and <linux/kvm.h> (Debian's linux-libc-dev)")


def _c_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/kvm.h>", "int main(void) {",
             'printf("{");']
    items = []
    for struct, members in K.CHECKED_STRUCTS.items():
        items.append((f"sizeof {struct}", f"sizeof(struct {struct})"))
        items += [(f"{struct}.{m}", f"offsetof(struct {struct}, {m})") for m in members]
    items.append(("sizeof kvm_run_io", "sizeof(((struct kvm_run *)0)->io)"))
    items += [(f"kvm_run.{m}", f"offsetof(struct kvm_run, {m})") for m in K.CHECKED_RUN_MEMBERS]
    items += [(f"kvm_run.io.{m}", f"offsetof(struct kvm_run, io.{m})")
              for m in ("direction", "size", "port", "count", "data_offset")]
    items += [(name, f"(unsigned long)({name})") for name in K.CHECKED_IOCTLS]
    for i, (key, expr) in enumerate(items):
        sep = "," if i else ""
        lines.append(f'printf("{sep}\\"{key}\\": %lu", (unsigned long)({expr}));')
    lines += ['printf("}\\n");', "return 0; }"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def header_layout(tmp_path_factory):
    work = tmp_path_factory.mktemp("kvm_abi")
    (work / "layout.c").write_text(_c_program())
    subprocess.run(["gcc", "-o", str(work / "layout"), str(work / "layout.c")], check=True, capture_output=True)
    return json.loads(subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout)


def _ours(key: str) -> int:
    ffi = K.ffi
    if key.startswith("sizeof "):
        name = key.split()[1]
        return ffi.sizeof(f"struct {name}")
    if "." in key:
        struct, member = key.split(".", 1)
        return ffi.offsetof(f"struct {struct}", *member.split("."))
    return getattr(K, key)


def test_every_layout_and_number_matches_the_header(header_layout):
    wrong = {key: (_ours(key), value) for key, value in header_layout.items() if _ours(key) != value}
    assert wrong == {}, "ours vs <linux/kvm.h>"
    assert len(header_layout) > 60

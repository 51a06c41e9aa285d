"""Driving a disk-booted Debian under `pvhyp up` through its hvc0 console: log in, run, wait.

The template comes from `pvhyp image debian --rootfs` (built on first use, about
ten minutes, unless $PVHYP_ROOTFS_DIR or the cache has one); guests boot clones
of it, never the template.
"""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.debian.test_toolstack import type_line

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOOT_TIMEOUT = float(os.environ.get("PVHYP_ROOTFS_BOOT_TIMEOUT", "1800"))


def template_image() -> dict:
    from dom0.images import rootfs
    try:
        return rootfs.find_or_build(os.environ.get("PVHYP_ROOTFS_DIR"))
    except rootfs.ImageError as e:
        pytest.skip(str(e))


def template_config(image: dict, directory: str, name: str = "template", memory: int = 384) -> str:
    """An xl config booting `image`'s disk, as examples/debian-disk.cfg does."""
    path = os.path.join(directory, f"{name}.cfg")
    with open(path, "w") as f:
        f.write(f'name = "{name}"\nkernel = "{image["kernel"]}"\nramdisk = "{image["ramdisk"]}"\n'
                f'memory = {memory}\nvcpus = 1\nextra = "{image["cmdline"]}"\n'
                f"disk = [ 'format={image['format']}, vdev=xvda, access=rw, target={image['image']}' ]\n"
                'on_poweroff = "destroy"\non_reboot = "restart"\non_crash = "preserve"\n')
    return path


class Console:
    """One guest's hvc0: what it printed (dom0's console log) and a way to type."""

    def __init__(self, host, name: str):
        self.host, self.name = host, name

    def text(self) -> str:
        """The console so far, without terminal escapes (bash's bracketed-paste toggles)."""
        return ANSI_ESCAPE.sub("", self.host.console_log(self.name))

    def wait(self, pattern: str, timeout: float = BOOT_TIMEOUT, after: int = 0) -> re.Match:
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.text()[after:])
            if found:
                return found
            assert time.monotonic() < deadline, (
                f"{self.name}: no {pattern!r} in {timeout:.0f}s; console tail:\n{self.text()[-3000:]}")
            time.sleep(0.5)

    def type(self, line: str) -> None:
        type_line(self.host, self.name, line)

    def login(self, password: str, after: int = 0, timeout: float = BOOT_TIMEOUT) -> None:
        # Not anchored at the end: a kernel message (e.g. the PC speaker's input device)
        # may follow the prompt on the console while agetty waits for the name.
        self.wait(r"login: ", timeout, after)
        start = len(self.text())
        self.type("root")
        self.wait(r"Password: ", 300, start)
        start = len(self.text())
        self.type(password)
        self.wait(r"root@[^ ]+:~# *\r?$", 600, start)     # bash may put an escape first

    def run(self, command: str, timeout: float = 600) -> str:
        """`command`'s output (its status must be 0)."""
        tag = f"END{time.monotonic_ns()}"
        start = len(self.text())
        self.type(f"{command}; echo {tag}-$?")
        found = self.wait(rf"{tag}-(\d+)", timeout, start)     # the echoed line has $?, not digits
        out = self.text()[start:].replace("\r", "")
        body = out.split("\n", 1)[1] if "\n" in out else ""
        body = body.rsplit(f"{tag}-", 1)[0]
        assert found.group(1) == "0", f"{command!r} failed ({found.group(1)}):\n{out[-2000:]}"
        return body

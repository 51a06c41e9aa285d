"""The one error a kernel image can cause: a BuildError naming the problem."""
from __future__ import annotations


class BuildError(Exception):
    """A kernel, ramdisk or layout the builder refuses; str() is one line for the user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

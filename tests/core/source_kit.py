"""The source tree the rule tests read: where it is and how its files are listed."""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("abi", "hypercalls", "pvhyp", "dom0", "pvguest")


def python_files(folder: str, root: pathlib.Path = ROOT,
                 exclude: tuple[str, ...] = ()) -> Iterator[pathlib.Path]:
    """Every .py file below root/folder, in a stable order, less those with a path
    part in `exclude` (a folder name or a file name)."""
    for path in sorted((root / folder).rglob("*.py")):
        if not set(exclude) & set(path.relative_to(root).parts):
            yield path

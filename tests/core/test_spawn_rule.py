"""Every Python process of ours starts through pvguest/spawn.py (issue 14, defect 8).

`python -m` / `python -c` put the working directory first on sys.path; spawn.py adds -P and
PYTHONSAFEPATH. A new `sys.executable` elsewhere would be a new way around that.
"""
from __future__ import annotations

from tests.core.source_kit import PACKAGES, ROOT, python_files


def test_only_the_spawn_module_names_the_interpreter():
    offenders = [str(path.relative_to(ROOT)) for package in PACKAGES for path in python_files(package)
                 if "sys.executable" in path.read_text() and path.relative_to(ROOT).as_posix() != "pvguest/spawn.py"]
    assert offenders == []

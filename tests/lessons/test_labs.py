"""The labs of docs/lessons/ run, every command and output checked (pvhyp/cli/lessons.py), and the runner's own rules."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from pvhyp.cli import lessons

ROOT = pathlib.Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "docs" / "lessons").glob("[0-9][0-9]-*.md"))
needs_xtf = pytest.mark.skipif(lessons.find_xtf() is None,
                               reason="no XTF kernels (../shared/xtf or $PVHYP_XTF_DIR)")


def test_there_are_six_labs_in_order():
    assert [p.name[:2] for p in LESSONS] == ["01", "02", "03", "04", "05", "06"]


@needs_xtf
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lab_runs(lesson: pathlib.Path, tmp_path):
    results = lessons.run_lesson(lesson, keep=tmp_path / "lab")
    assert results, f"{lesson} has no steps"
    failed = [r for r in results if not r.ok]
    assert not failed, lessons.describe_failure(failed[0], lesson)
    assert len(results) == len(lessons.parse(lesson.read_text())), "a step did not run"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lab_names_the_real_thing_in_xen(lesson: pathlib.Path):
    text = lesson.read_text()
    assert "xen/include/public/" in text, "a lab names the Xen header holding the real thing"
    assert "xen/arch/" in text or "xen/common/" in text or "tools/" in text, "... and Xen's source file"


# --- the runner's rules, on lessons made up here ---

def _run(text: str, tmp_path) -> list[lessons.StepResult]:
    path = tmp_path / "lesson.md"
    path.write_text(text)
    return lessons.run_lesson(path, keep=tmp_path / "lab")


def test_commands_outputs_ellipsis_and_captures(tmp_path):
    results = _run("""
Prose is not run.

```console
$ echo one; echo two; echo three
one
...
three
$ echo "domain 7 is up"
domain <<domid>> is ...
$ echo "again $domid"
again 7
$ echo "domain 7" && echo "still 7"
domain <<domid>>
still <<domid>>
$ exit 3
[exit 3]
$ echo unchecked
```

```python
seen = int(domid) + 1
```

```pycon
>>> seen
8
>>> print("a long line")
a ...
```

```python file=made.py
VALUE = 42
```

```console
$ python -c 'import made; print(made.VALUE)'
42
```
""", tmp_path)
    assert all(r.ok for r in results), [lessons.describe_failure(r, "x") for r in results if not r.ok]
    assert len(results) == 10


@pytest.mark.parametrize("block, why", [
    ("```console\n$ echo one\ntwo\n```\n", "output differs"),
    ("```console\n$ false\n```\n", "exit status 1, expected 0"),
    ("```console\n$ echo 'd 1'; echo 'e 2'\nd <<x>>\ne <<x>>\n```\n", "output differs"),
    ("```python\nassert 1 == 2, 'broken'\n```\n", "AssertionError: broken"),
    ("```pycon\n>>> 1 + 1\n3\n```\n", "doctest failed"),
])
def test_a_failed_step_says_why_and_ends_the_lab(tmp_path, block, why):
    results = _run(block + "```console\n$ echo never\n```\n", tmp_path)
    assert len(results) == 1 and not results[0].ok
    assert why in results[0].message


@pytest.mark.parametrize("text", ["```console\n$ echo\n", "```console\nstray output\n$ echo\n```\n",
                                  "```python file=../escape.py\nx = 1\n```\n"])
def test_a_broken_lesson_is_one_line(text):
    with pytest.raises(lessons.LessonError):
        lessons.parse(text, "bad.md")


def test_cli_reports_and_exits_by_result(tmp_path):
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text("```console\n$ echo hi\nhi\n```\n")
    bad.write_text("```console\n$ echo hi\nho\n```\n")
    cmd = [sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())", "lessons", "run"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "1 of 1 lessons passed" in ok.stdout
    failed = subprocess.run([*cmd, str(good), str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode == 1 and "--- expected" in failed.stdout and "1 of 2 lessons passed" in failed.stdout
    missing = subprocess.run([*cmd, str(tmp_path / "none.md")], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1

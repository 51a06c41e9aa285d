"""Labs that run: a doctest-like runner over the Markdown lessons in docs/lessons/.

A lesson is Markdown; its fenced blocks are the steps, run in order in a
fresh directory of the lab's own (so every command a student reads is one a
test ran, and the lessons never rot). The rules, by the fence's info string:

* ```` ```console ````: lines starting with `$ ` are shell commands (bash, in
  the lab directory; a line ending in `\\` continues on the next). The lines
  after a command, up to the next `$ `, are its expected output: its stdout,
  then its stderr (not interleaved as on a terminal: pvhyp's processes write
  both at once, and a lesson's expectation must not depend on the race):
    - a line that is only `...` matches any number of lines (none too);
    - `...` inside a line matches any text on that line;
    - `<<name>>` matches one word (no spaces) and captures it: later commands
      see it as `$name`, Python blocks as `name`; a second `<<name>>` must
      match the same word;
    - a last line `[exit N]` expects exit status N (default 0);
    - a command with no lines below it: only its exit status is checked.
* ```` ```python file=NAME ````: the block is written to NAME in the lab
  directory (not run); the lab directory is on PYTHONPATH, so a config's
  `kernel = "python:NAME_WITHOUT_PY"` boots it as a Python guest.
* ```` ```python ````: executed, in one namespace per lab (cwd = lab directory).
* ```` ```pycon ````: a doctest (`>>>` lines and their output; ELLIPSIS on),
  in the same namespace.
* any other fence (```` ```text ````, ```` ```c ````): prose, not run.

The environment of every command: the lab directory as cwd, `PVHYP_RUN_DIR`
= `run/` in it (so `pvhyp up` / `down` touch nothing else), `XENSTORED_PATH`
= that run directory's xenstore socket (Xen's own xenstore-ls/-read/-watch
use it), `$XTF` = the XTF kernels (`$PVHYP_XTF_DIR`, else `shared/xtf`
beside the checkout), the running interpreter's bin directory first on PATH
(`pvhyp` is this pvhyp), and `PVHYP_ACCEL=unicorn` (the same CPU engine on
every machine, so outputs match). After the last step, a `pvhyp up` left
running is taken down.
"""
from __future__ import annotations

import dataclasses
import doctest
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from pvguest.spawn import python_command

COMMAND_TIMEOUT = 180.0     # seconds one command may take (a Debian boot fits)
ELLIPSIS = "..."
CAPTURE = re.compile(r"<<([A-Za-z_][A-Za-z0-9_]*)>>")
EXIT_LINE = re.compile(r"^\[exit (\d+)\]$")
FENCE = re.compile(r"^(`{3,})\s*([^`]*)$")
CODE_ROOT = pathlib.Path(__file__).resolve().parents[2]


class LessonError(Exception):
    """A lesson file that cannot be parsed (one line, naming file and line)."""


@dataclasses.dataclass
class Step:
    kind: str               # "command", "python", "file", "doctest"
    text: str               # the command line, the code, the file body, the doctest
    line: int               # where it starts in the Markdown (1-based)
    expected: list[str] | None = None   # command: expected output lines (None: not checked)
    exit_status: int = 0
    file_name: str = ""

    def title(self) -> str:
        if self.kind == "command":
            return f"$ {self.text}"
        if self.kind == "file":
            return f"(writes {self.file_name})"
        first = next((ln for ln in self.text.splitlines() if ln.strip()), "")
        return f"({self.kind}) {first.strip()[:60]}"


@dataclasses.dataclass
class StepResult:
    step: Step
    ok: bool
    seconds: float
    output: str = ""
    message: str = ""


# --- parsing ---

def _fenced_blocks(text: str, name: str) -> Iterator[tuple[str, dict[str, str], list[str], int]]:
    """(language, attributes, body lines, line of the first body line) for each fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).split()
        start = i + 1
        end = start
        while end < len(lines) and not (lines[end].startswith(fence) and not lines[end].strip("`")):
            end += 1
        if end == len(lines):
            raise LessonError(f"{name}:{i + 1}: fenced block never closed")
        attributes = dict(word.split("=", 1) for word in info[1:] if "=" in word)
        yield (info[0] if info else ""), attributes, lines[start:end], start + 1
        i = end + 1


def _console_steps(body: list[str], first_line: int) -> Iterator[Step]:
    step: Step | None = None
    i = 0
    while i < len(body):
        line = body[i]
        if line.startswith("$ "):
            if step is not None:
                yield _finish(step)
            command, at = line[2:], first_line + i
            while command.endswith("\\") and i + 1 < len(body):
                i += 1
                command = command[:-1] + body[i].lstrip()
            step = Step("command", command.strip(), at, expected=[])
        elif step is not None:
            assert step.expected is not None
            step.expected.append(line.rstrip())
        elif line.strip():
            raise LessonError(f"line {first_line + i}: console output before any `$ ` command")
        i += 1
    if step is not None:
        yield _finish(step)


def _finish(step: Step) -> Step:
    expected = step.expected or []
    while expected and not expected[-1]:
        expected.pop()
    if expected and EXIT_LINE.match(expected[-1]):
        step.exit_status = int(EXIT_LINE.match(expected.pop()).group(1))  # type: ignore[union-attr]
    step.expected = expected or None
    return step


def parse(text: str, name: str = "<lesson>") -> list[Step]:
    """The steps of a lesson, in order."""
    steps: list[Step] = []
    for language, attributes, body, line in _fenced_blocks(text, name):
        if language == "console":
            try:
                steps.extend(_console_steps(body, line))
            except LessonError as e:
                raise LessonError(f"{name}:{e}") from None
        elif language == "python" and "file" in attributes:
            file_name = attributes["file"]
            if "/" in file_name or file_name.startswith("."):
                raise LessonError(f"{name}:{line}: file={file_name!r} must be a plain name")
            steps.append(Step("file", "\n".join(body) + "\n", line, file_name=file_name))
        elif language == "python":
            steps.append(Step("python", "\n".join(body) + "\n", line))
        elif language == "pycon":
            steps.append(Step("doctest", "\n".join(body) + "\n", line))
    return steps


# --- matching ---

def output_pattern(expected: list[str], known: dict[str, str]) -> re.Pattern[str]:
    """A regex for the whole output; `known` captures match their value literally."""
    parts: list[str] = []
    seen: set[str] = set()
    for line in expected:
        if line.strip() == ELLIPSIS:
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        piece = []
        for k, chunk in enumerate(CAPTURE.split(line)):
            if k % 2 == 1:
                if chunk in known:
                    piece.append(re.escape(known[chunk]))
                elif chunk in seen:
                    piece.append(f"(?P={chunk})")
                else:
                    seen.add(chunk)
                    piece.append(f"(?P<{chunk}>\\S+)")
            else:
                piece.append(".*?".join(re.escape(s) for s in chunk.split(ELLIPSIS)))
        parts.append("".join(piece) + r"[ \t]*\n")
    return re.compile("".join(parts))


def _normalise(output: str) -> str:
    lines = [ln.rstrip() for ln in output.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "".join(ln + "\n" for ln in lines)


def match_output(expected: list[str], output: str, known: dict[str, str]) -> dict[str, str] | None:
    """The captures if `output` matches `expected`, else None."""
    m = output_pattern(expected, known).fullmatch(_normalise(output))
    return None if m is None else m.groupdict()


# --- running ---

def find_xtf() -> pathlib.Path | None:
    for candidate in (os.environ.get("PVHYP_XTF_DIR"), CODE_ROOT.parent / "shared" / "xtf"):
        if candidate and (pathlib.Path(candidate) / "test-pv64-example").is_file():
            return pathlib.Path(candidate)
    return None


class Lab:
    """One lesson being run: its directory, run directory, environment and namespace."""

    def __init__(self, path: pathlib.Path, directory: pathlib.Path):
        self.path = path
        self.dir = directory
        self.run_dir = directory / "run"
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        self.captures: dict[str, str] = {}
        bin_dir = os.path.dirname(python_command([])[0])     # this interpreter's bin: its `pvhyp`
        xtf = find_xtf()
        self.env = dict(os.environ,
                        PVHYP_RUN_DIR=str(self.run_dir),
                        XENSTORED_PATH=str(self.run_dir / "xenstored" / "socket"),
                        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
                        PYTHONPATH=os.pathsep.join([str(directory), str(CODE_ROOT),
                                                    os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                        PVHYP_ACCEL="unicorn",
                        XTF=str(xtf) if xtf else "")
        self.namespace: dict[str, object] = {"__name__": "__lesson__", "lab_dir": directory,
                                             "env": self.env}

    def run_step(self, step: Step) -> StepResult:
        start = time.monotonic()
        try:
            ok, output, message = getattr(self, f"_run_{step.kind}")(step)
        except Exception as e:      # a lesson's own Python failing is a failed step, with its reason
            ok, output, message = False, "", f"{type(e).__name__}: {e}"
        return StepResult(step, ok, time.monotonic() - start, output, message)

    def _run_command(self, step: Step) -> tuple[bool, str, str]:
        env = dict(self.env, **self.captures)
        try:
            proc = subprocess.run(["bash", "-c", step.text], cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=COMMAND_TIMEOUT, text=True, errors="replace")
        except subprocess.TimeoutExpired as e:
            out = "".join(part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
                          for part in (e.stdout, e.stderr))
            return False, out, f"no exit within {COMMAND_TIMEOUT:.0f} s"
        output = _normalise(proc.stdout) + _normalise(proc.stderr)
        if proc.returncode != step.exit_status:
            return False, output, f"exit status {proc.returncode}, expected {step.exit_status}"
        if step.expected is None:
            return True, output, ""
        captures = match_output(step.expected, output, self.captures)
        if captures is None:
            return False, output, "output differs from the lesson's"
        self.captures.update(captures)
        self.namespace.update(captures)
        return True, output, ""

    def _run_file(self, step: Step) -> tuple[bool, str, str]:
        (self.dir / step.file_name).write_text(step.text)
        return True, "", ""

    def _in_lab_dir(self, action: Callable[[], tuple[bool, str, str]]) -> tuple[bool, str, str]:
        cwd, saved_path = os.getcwd(), list(sys.path)
        os.chdir(self.dir)
        sys.path.insert(0, str(self.dir))
        try:
            return action()
        finally:
            os.chdir(cwd)
            sys.path[:] = saved_path

    def _run_python(self, step: Step) -> tuple[bool, str, str]:
        def action() -> tuple[bool, str, str]:
            code = compile("\n" * (step.line - 1) + step.text, str(self.path), "exec")
            out = io.StringIO()
            saved = sys.stdout
            sys.stdout = out
            try:
                exec(code, self.namespace)
            finally:
                sys.stdout = saved
            return True, out.getvalue(), ""
        return self._in_lab_dir(action)

    def _run_doctest(self, step: Step) -> tuple[bool, str, str]:
        def action() -> tuple[bool, str, str]:
            test = doctest.DocTestParser().get_doctest(step.text, self.namespace, self.path.name,
                                                       str(self.path), step.line - 1)
            report = io.StringIO()
            runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
            result = runner.run(test, out=report.write, clear_globs=False)
            self.namespace.update(test.globs)       # DocTest ran on a copy: keep what it defined
            return result.failed == 0, report.getvalue(), "doctest failed" if result.failed else ""
        return self._in_lab_dir(action)

    def cleanup(self) -> None:
        """Take down a `pvhyp up` the lesson left running (a failed step may have stopped it short)."""
        if (self.run_dir / "pvhyp.sock").exists():
            subprocess.run(["pvhyp", "down"], cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)


def run_lesson(path: pathlib.Path, report: Callable[[StepResult], None] = lambda r: None,
               keep: pathlib.Path | None = None) -> list[StepResult]:
    """Run every step of the lesson at `path` in a fresh lab directory; stop at the first failure."""
    steps = parse(path.read_text(), str(path))
    directory = pathlib.Path(tempfile.mkdtemp(prefix=f"lab-{path.stem[:20]}-")) if keep is None else keep
    directory.mkdir(parents=True, exist_ok=True)
    lab = Lab(path.resolve(), directory)
    results: list[StepResult] = []
    try:
        for step in steps:
            result = lab.run_step(step)
            results.append(result)
            report(result)
            if not result.ok:
                break
    finally:
        lab.cleanup()
        if keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    return results


def describe_failure(result: StepResult, path: pathlib.Path | str) -> str:
    """What a student (or a test log) needs to see of a failed step."""
    step = result.step
    lines = [f"{path}:{step.line}: {step.title()}: {result.message}"]
    if step.expected is not None:
        lines += ["--- expected (from the lesson)", *step.expected]
    lines += ["--- got", result.output.rstrip()]
    return "\n".join(lines)

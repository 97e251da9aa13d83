"""Every example in README.md and docs/ runs as written, and shows what it prints.

The convention (CONTRIBUTING.md repeats it for writers):

- A ```python block runs in the page's one Python process, in page order, all blocks of a
  page sharing one namespace (so one SparkSession per page).
- A ```console block holds commands after a ``$ `` prompt (a line ending in ``\\`` goes on
  on the next line) and, below each command, what it prints. Each command runs in bash; its
  stdout must match the lines shown. A command may exit non-zero only when the lines shown
  are its stderr (an ``error:`` line, say), which must then match.
- A ```bash, ```sh or ```shell block runs as one bash script (``set -euo pipefail``).
- A ```text block directly after a runnable block is that block's stdout when it carries
  ``<!-- docs: output -->``; otherwise it must say ``<!-- docs: illustrative -->``.
- In expected output, ``...`` stands for any text (timings, paths, Spark's lines).
- An HTML comment on the line just before a fence changes how it runs:
  ``<!-- docs: skip: WHY -->`` does not run it (a cluster, a cloud bucket, a ten-minute
  benchmark), ``<!-- docs: xfail: WHY -->`` expects it to fail (a known bug; the page stops
  there), ``<!-- docs: unchecked: WHY -->`` runs a console block without comparing what it
  prints.

Each page runs in a fresh temporary directory that links ``.venv``, ``conf``, ``jobs`` and
``scripts`` of this checkout, in an environment with none of the variables the Makefile
exports (``PYSPARK_PYTHON``, ``PYSPARK_DRIVER_PYTHON``, ``SPARK_LOCAL_IP``) and without the
venv on ``PATH``: what a user who copies the example into a shell would have. One addition:
``SPARK_SUBMIT_OPTS`` (read by ``spark-submit``, so by every JVM a page starts: PySpark's,
the command line's, a Connect server's) stops the JIT at its first tier and picks the
serial collector. The examples' JVMs live seconds, and the second tier's compiling cost them
more than it saved; Java's arithmetic is IEEE whatever compiles it, so nothing a page
prints changes.

``DOCS_RUN_XFAIL=1`` runs the xfail blocks as ordinary ones, with ``PYSPARK_PYTHON`` set to
this interpreter: it checks the rest of such a page while its known bug is open.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("docs_worker.py")
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINKED = (".venv", "conf", "jobs", "scripts")
RUNNABLE = {"python", "console", "bash", "sh", "shell"}
# Fences that show a file or a format, never run and never printed output.
SHOWN = {"toml", "json", "yaml", "yml", "sql", "text", "ini", "properties", "mermaid", "diff"}
MARKER = re.compile(
    r"^<!--\s*docs:\s*(skip|xfail|unchecked|output|illustrative)\s*(?::\s*(.*?))?\s*-->$"
)
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
BLOCK_TIMEOUT = 600
# The examples' JVMs live seconds: the first JIT tier alone and the serial collector start
# them faster on a small machine (as tests/cluster's FAST_JVM).
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
RUN_XFAIL = os.environ.get("DOCS_RUN_XFAIL") == "1"


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    marker: str = ""
    reason: str = ""
    expected: str | None = None  # the stdout shown in a following ```text block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    text: str
    expected: str
    line: int


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)


def parse(path: Path) -> Page:
    """The fenced blocks of a page, with their markers, checked against the convention."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page(path)
    i, last_end = 0, -1  # last_end: the closing fence of the last runnable block
    last_runnable: Block | None = None
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mk = MARKER.match(prev)
        where = f"{path.relative_to(ROOT)}:{start + 1}"
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        if mk:
            block.marker, block.reason = mk.group(1), mk.group(2) or ""
        assert lang, f"{where}: a fence needs a language (python, console, bash, text, ...)"
        assert lang in RUNNABLE | SHOWN, f"{where}: unknown fence language {lang!r}"
        if block.marker in ("skip", "xfail", "unchecked"):
            assert block.reason, f"{where}: <!-- docs: {block.marker}: WHY --> needs a reason"
        if lang == "text":
            assert block.marker in ("output", "illustrative"), (
                f"{where}: a ```text block is either checked output (<!-- docs: output -->, "
                "right after the block that prints it) or <!-- docs: illustrative -->"
            )
            if block.marker == "output":
                assert last_runnable is not None and _only_marker_between(lines, last_end, start), (
                    f"{where}: <!-- docs: output --> must follow the block that prints it"
                )
                last_runnable.expected = block.body
        elif lang in RUNNABLE:
            page.blocks.append(block)
            last_runnable, last_end = block, i - 1
    _check_unfenced(path, lines)
    return page


def _only_marker_between(lines: list[str], end_of_block: int, fence: int) -> bool:
    between = [ln.strip() for ln in lines[end_of_block + 1 : fence] if ln.strip()]
    return len(between) == 1 and MARKER.match(between[0]) is not None


def _check_unfenced(path: Path, lines: list[str]) -> None:
    """A shell example must be in a fence, or it would never run."""
    inside = False
    for n, ln in enumerate(lines, 1):
        if FENCE.match(ln):
            inside = not inside
            continue
        if not inside and re.match(r"^ {4,}(\$ |\.venv/|mxnorm-spark |make |spark-submit )", ln):
            raise AssertionError(f"{path.relative_to(ROOT)}:{n}: a shell example outside a fence")


def commands(block: Block) -> list[Command]:
    """The ``$`` commands of a console block and the output shown under each."""
    out: list[Command] = []
    lines = block.body.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        assert ln.startswith("$ "), f"{block.where}: a console block starts with a $ command"
        text, first = ln[2:], i
        while (text.endswith("\\") or not _complete(text)) and i + 1 < len(lines):
            i += 1
            text += "\n" + lines[i]
        i += 1
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        out.append(Command(text, "\n".join(shown).strip("\n"), block.line + 1 + first))
    return out


def _complete(command: str) -> bool:
    """False while a quoted string is still open (a ``python -c "..."`` over several lines)."""
    try:
        shlex.split(command)
    except ValueError:
        return False
    return True


def matches(expected: str, actual: str) -> bool:
    """``actual`` equals ``expected`` line for line (trailing spaces aside), ``...`` = any text."""

    def norm(s: str) -> str:
        return "\n".join(ln.rstrip() for ln in s.strip("\n").splitlines())

    parts = [re.escape(p) for p in norm(expected).split("...")]
    return re.fullmatch("(?s)" + ".*?".join(parts), norm(actual)) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(workdir: Path) -> dict[str, str]:
    """The environment of a user's shell: no Makefile exports, no venv on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_LOCAL_IP", "VIRTUAL_ENV")
        and not k.startswith(("PYTEST_", "MXNORM_"))
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin)
    )
    # A Connect server that a page starts must not take a port or PID file another uses.
    env["MXNORM_CONNECT_PORT"] = str(_free_port())
    env["MXNORM_CONNECT_DIR"] = str(workdir / ".connect-server")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("SPARK_SUBMIT_OPTS", FAST_JVM)
    if RUN_XFAIL:
        env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    return env


class Worker:
    """The page's Python process; its own output (the JVM's log) goes to ``log``."""

    def __init__(self, workdir: Path, env: dict[str, str], log: Path) -> None:
        r, w = os.pipe()
        self._log = open(log, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(w)],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(w,),
            text=True,
        )
        os.close(w)
        self.answers = os.fdopen(r, encoding="utf-8")

    def run(self, block: Block) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"code": block.body, "where": block.where}) + "\n")
        self.proc.stdin.flush()
        line = self.answers.readline()
        if not line:
            raise AssertionError(f"{block.where}: the page's Python process died")
        answer: dict[str, object] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.answers.close()
        self._log.close()


def run_shell(script: str, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def run_page(page: Page, workdir: Path) -> None:
    """Run the page's blocks in order; raise on the first one that fails or prints otherwise.

    A failing xfail block ends the page there (``pytest.xfail``): the blocks after it use
    what it would have made.
    """
    env = user_env(workdir)
    worker: Worker | None = None
    try:
        for block in page.blocks:
            if block.marker == "skip":
                continue
            if block.lang == "python":
                worker = worker or Worker(workdir, env, workdir / ".python-process.log")
                failure = _run_python(block, worker)
            elif block.lang == "console":
                failure = _run_console(block, workdir, env)
            else:
                failure = _run_script(block, workdir, env)
            if block.marker == "xfail" and not RUN_XFAIL:
                if failure:
                    pytest.xfail(f"{block.where}: {block.reason}")
                raise AssertionError(
                    f"{block.where} is marked xfail ({block.reason}) but ran: remove the marker"
                )
            if failure:
                raise AssertionError(failure)
    finally:
        if worker is not None:
            worker.close()


def _differs(where: str, printed: str, expected: str | None) -> str:
    if expected is None or matches(expected, printed):
        return ""
    return f"{where} printed:\n{printed}\nbut the page shows:\n{expected}"


def _run_python(block: Block, worker: Worker) -> str:
    answer = worker.run(block)
    if not answer["ok"]:
        return f"{block.where} raised:\n{answer['error']}"
    return _differs(block.where, str(answer["stdout"]), block.expected)


def _run_script(block: Block, workdir: Path, env: dict[str, str]) -> str:
    done = run_shell("set -euo pipefail\n" + block.body, workdir, env)
    if done.returncode != 0:
        out = f"{_tail(done.stdout)}\n{_tail(done.stderr)}"
        return f"{block.where} exited {done.returncode}:\n{out}"
    return _differs(block.where, done.stdout, block.expected)


def _run_console(block: Block, workdir: Path, env: dict[str, str]) -> str:
    for cmd in commands(block):
        done = run_shell(cmd.text, workdir, env)
        where = f"{block.page.relative_to(ROOT)}:{cmd.line}: `{cmd.text}`"
        if done.returncode != 0:
            # A failing command shows its error: the lines shown are its stderr.
            if not cmd.expected or not matches(cmd.expected, done.stderr):
                return (
                    f"{where} exited {done.returncode}:\n{_tail(done.stdout)}\n"
                    f"{_tail(done.stderr)}"
                )
        elif block.marker != "unchecked":
            failure = _differs(where, done.stdout, cmd.expected)
            if failure:
                return failure
    return ""


def _workdir(tmp_path: Path) -> Path:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(path: Path, tmp_path: Path) -> None:
    page = parse(path)
    workdir = _workdir(tmp_path)
    try:
        run_page(page, workdir)
    finally:
        _stop_connect_server(workdir)


def _stop_connect_server(workdir: Path) -> None:
    """A page that starts a Connect server stops it; if it failed before, stop it here."""
    if (workdir / ".connect-server" / "server.pid").exists():
        env = user_env(workdir)
        env["MXNORM_CONNECT_DIR"] = str(workdir / ".connect-server")
        subprocess.run(["scripts/connect-server.sh", "down"], cwd=workdir, env=env, check=False)


def test_every_page_follows_the_convention() -> None:
    """Fast, no JVM: every fence has a known language, every marker a reason."""
    for path in PAGES:
        parse(path)


def test_relative_links_resolve() -> None:
    """Every relative link of the README and the docs names an existing file."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for path in [*PAGES, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in link.findall(text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file = target.split("#", 1)[0]
            if not (path.parent / file).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_matching_rule() -> None:
    assert matches("a ... c", "a b c")
    assert matches("x\n...\nz", "x\n1\n2\nz")
    assert not matches("a b", "a c")
    assert not matches("batch 0", "batch 0\nbatch 1")

"""The README and docs cannot rot: their sessions run, as written, in a real shell.

A session is a fenced block whose language is `console`: lines beginning with `$ `
are commands, the lines after one are what it prints (`...` stands for any lines;
the printed lines must appear in that order, others may come between, such as a
background server's banner). A `python` block whose first line is a comment naming
a file (`# hello.py`) is that file: it is written into the session's directory when
the session reaches it, so a later command runs it (or a running `--reload` sees
it change). Every session of a page runs in one bash, as a reader would type it,
from a home directory of its own in which `cluster` is the clone; port 8000, 8001,
8080 and 5599 become free ports, and `make run` gets one through PORT. A command whose
output does not match yet is tried again until a deadline: a server that is still
starting, or reloading, is waited for, never slept on.

Every other `python` block must at least compile (fragments are wrapped in a
function first), so a snippet cannot drift into a syntax error either.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
FILE_MARK = re.compile(r"#\s*([\w./-]+\.py)\s*$")
DONE = "__docs_session_done__"


@dataclass
class Step:
    command: str = ""  # a shell command, or "" for a file to write
    expected: list[str] = field(default_factory=list)
    path: str = ""
    text: str = ""


def steps_of(page: Path) -> list[Step]:
    steps: list[Step] = []
    for lang, body in FENCE.findall(page.read_text()):
        first = body.splitlines()[0] if body.strip() else ""
        if lang == "python" and FILE_MARK.fullmatch(first):
            steps.append(Step(path=FILE_MARK.fullmatch(first).group(1), text=body))  # type: ignore[union-attr]
        elif lang == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    steps.append(Step(command=line[2:].split("  #")[0].rstrip()))
                elif line.strip() and steps:
                    steps[-1].expected.append(line.rstrip())
    return steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def matches(expected: list[str], lines: list[str]) -> bool:
    """Every expected line, in order, among `lines`; `...` matches any run of them."""
    at = 0
    for want in expected:
        if want.strip() == "...":
            continue
        while at < len(lines) and lines[at].rstrip() != want:
            at += 1
        if at == len(lines):
            return False
        at += 1
    return True


class Shell:
    """One bash, fed line by line, as a reader's terminal."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        # Commands come on fd 3, not on stdin: a background job (`make run &`) keeps
        # the shell's stdin, which is /dev/null, as a terminal's would not feed it ours.
        commands, self.commands = os.pipe()
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile", f"/dev/fd/{commands}"],
                                     cwd=home, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     pass_fds=(commands,), start_new_session=True)
        os.close(commands)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.pending = b""
        # Job control, as in a reader's terminal: `kill %1` reaches the whole job.
        self.run("set -m", timeout=10)

    def run(self, command: str, timeout: float) -> tuple[int, list[str]]:
        assert self.proc.stdout is not None
        os.write(self.commands, f"{command}\necho {DONE}$?\n".encode())
        deadline = time.monotonic() + timeout
        while f"{DONE}".encode() not in self.pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"$ {command}: no end within {timeout}s; printed:\n"
                                     f"{self.pending.decode(errors='replace')}")
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                chunk = b""
            if chunk:
                self.pending += chunk
            else:
                time.sleep(0.02)  # poll: a pipe fed by the shell and its background jobs
        out, _, rest = self.pending.partition(DONE.encode())
        code, _, self.pending = rest.partition(b"\n")
        return int(code), out.decode(errors="replace").splitlines()

    def close(self) -> None:
        """Stop every job the session left, then anything else in its session."""
        with contextlib.suppress(AssertionError, OSError):
            self.run("kill $(jobs -p) 2>/dev/null; wait", timeout=60)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._members():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 20
            while self._members() and time.monotonic() < deadline:
                time.sleep(0.1)  # poll: processes of the session leaving
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        os.close(self.commands)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _members(self) -> list[int]:
        """Processes still in the shell's session (its jobs have groups of their own)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                found.append(int(entry.name))
        return found


SESSIONS = [page for page in PAGES if any(s.command for s in steps_of(page))]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", SESSIONS, ids=[p.name for p in SESSIONS])
def test_every_session_runs_as_written(page: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "cluster").symlink_to(ROOT)  # the clone the docs speak of
    ports = {old: str(free_port()) for old in ("8000", "8001", "8080", "5599")}
    path = os.environ["PATH"].replace(str(ROOT / ".venv" / "bin") + os.pathsep, "")
    env = {"HOME": str(home), "PATH": path, "PORT": ports["8000"], "LANG": "C.UTF-8",
           "TERM": "dumb", "CLUSTER_KEYS": ""}
    shell = Shell(home, env)
    cwd = home
    try:
        for step in steps_of(page):
            if not step.command:
                # Never into the clone itself: a session writes its files in its home.
                assert cwd.resolve() != ROOT and ROOT not in cwd.resolve().parents, cwd
                (cwd / step.path).write_text(step.text)
                continue
            command = step.command
            for old, new in ports.items():
                command = re.sub(rf"\b{old}\b", new, command)
            expected = step.expected
            for old, new in ports.items():
                expected = [re.sub(rf"\b{old}\b", new, e) for e in expected]
            print(f"{time.strftime('%H:%M:%S')} $ {command}", flush=True)  # shown on failure
            deadline = time.monotonic() + 120
            while True:
                code, lines = shell.run(command, timeout=300)
                if command.endswith("&") or (code == 0 and matches(expected, lines)):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{page.name}: $ {step.command}\nexit {code}, "
                                         f"printed:\n" + "\n".join(lines) +
                                         "\nexpected:\n" + "\n".join(expected))
                time.sleep(0.2)  # poll: the server is starting or reloading
            _, pwd = shell.run("pwd", timeout=10)  # where the next file goes
            cwd = Path(pwd[-1])
            assert cwd in (home, ROOT) or home in cwd.parents, cwd
    finally:
        shell.close()


def python_blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        for number, (lang, body) in enumerate(FENCE.findall(page.read_text())):
            if lang == "python":
                found.append((page.name, number, body))
    return found


@pytest.mark.parametrize(("page", "number", "body"), python_blocks(),
                         ids=[f"{p}-{n}" for p, n, _ in python_blocks()])
def test_every_python_block_compiles(page: str, number: int, body: str) -> None:
    try:
        ast.parse(body)
    except SyntaxError:
        # A fragment (a `return` from a handler, say): it must compile inside one.
        wrapped = "async def _fragment():\n" + "".join(f"    {line}\n"
                                                       for line in body.splitlines())
        ast.parse(wrapped)


def test_there_are_sessions_to_run() -> None:
    names = {p.name for p in SESSIONS}
    assert {"README.md", "state.md"} <= names, names

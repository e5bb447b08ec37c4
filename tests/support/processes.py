"""Running ``python -m sctrain`` and its launchers as a user does: in subprocesses started in the repository,
with a time limit, so a hang fails the test instead of blocking CI."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .paths import REPO

TIMEOUT = 300


def run(cmd: list[str], env: dict | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``cmd`` run to its end in the repository, output captured; a run past ``timeout`` fails the test."""
    try:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout} s (a hang): {' '.join(cmd)}\n{(e.stderr or b'')[-3000:]!r}")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A new session per run, so the whole launcher tree can be killed like a dying node."""
    with open(log, "w") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, **(env or {})})


def finish(cmd: list[str], log: Path, env: dict | None = None) -> str:
    proc = start(cmd, log, env)
    rc = proc.wait(TIMEOUT)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    return text


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun puts each worker in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(60)


def wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    kill_tree(proc)
    pytest.fail(f"timed out waiting for {what}")


def stalled_save(cmd: list[str], from_step: int, seconds: float = 60) -> list[str]:
    """``cmd`` (``python -m sctrain ...``) run through support/stalled_save.py: saves from ``from_step`` on stall."""
    assert cmd[1:3] == ["-m", "sctrain"], cmd
    return [cmd[0], str(Path(__file__).with_name("stalled_save.py")), str(from_step), str(seconds), *cmd[3:]]

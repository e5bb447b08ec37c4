"""One owner per run folder: rank 0 holds an exclusive ``flock`` on ``output_dir/.lock`` for the whole run.

Two trainings writing one folder interleave ``metrics.jsonl`` and overwrite each other's states, so the
second is refused, naming the holder (PID and host, written inside the file). The kernel drops a
``flock`` when its process dies, however it dies: the file a killed run leaves behind is no lock, and
the next run takes it over without asking anyone to delete it.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import IO, Optional

try:
    import fcntl
except ImportError:  # Windows: no locking
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
ORPHAN_WAIT_S = 10.0  # how long a lock whose holder has exited may still be held by its orphaned children

_held: Optional[IO[str]] = None  # the open lock file: the lock lives as long as it stays open


class RunDirError(RuntimeError):
    """output_dir cannot be used (not a folder, not writable, owned by another run); one line naming it."""


def claim(output_dir: str | Path) -> None:
    """Create ``output_dir`` if needed and lock it for this process, before anything is written into it."""
    global _held
    release()
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out} is a file, not a folder; pick another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK_NAME, "a+")  # a+: never truncates the holder's line before the lock is ours
    except OSError as e:
        raise RunDirError(f"cannot write into output_dir {out} ({e.strerror or e}); pick a writable folder") from None
    if fcntl is None:
        _held = lock
        return
    try:
        _lock(lock)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "a run that is just starting"
        lock.close()
        raise RunDirError(f"output_dir {out} is in use by another training run ({holder}); wait for it to end, "
                          "stop it, or pick another output_dir") from None
    except OSError as e:  # e.g. a network filesystem without lock support: run, but say it is unguarded
        log.warning("cannot lock %s (%s): nothing stops a second run from writing into this folder",
                    out / LOCK_NAME, e.strerror or e)
    lock.seek(0)
    previous = lock.read().strip()
    lock.seek(0)
    lock.truncate()
    lock.write(f"PID {os.getpid()} on host {socket.gethostname()}\n")
    lock.flush()
    if previous:
        log.info("took over %s from %s, which no longer runs", out / LOCK_NAME, previous)
    _held = lock


def _lock(lock: IO[str]) -> None:
    """``flock`` now, or within :data:`ORPHAN_WAIT_S` when the holder named inside has exited on this host:
    then children it forked (packing, loader workers) still hold the open file, and they end soon."""
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            lock.seek(0)
            found = re.match(r"PID (\d+) on host (\S+)", lock.read())
            if not found or found[2] != socket.gethostname() or _alive(int(found[1])) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def release() -> None:
    """Give the folder up (the file stays: a stale one blocks nobody); a no-op when nothing is held.

    Also right in a forked child (a loader worker), where it closes the inherited copy only: a child
    outliving a killed parent then keeps nothing locked. ``flock(LOCK_UN)`` there would unlock the parent
    too (both share one open file), which is why this only closes."""
    global _held
    if _held is not None:
        _held.close()
        _held = None

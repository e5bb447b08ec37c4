"""Small helpers every package uses: atomic file writes and one-line error reasons."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse to sync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path, keep_suffix: bool = False) -> Path:
    """A hidden temporary name next to ``path`` that :func:`atomic_write` (and its stale-file sweep) use.

    ``keep_suffix``: the name still ends with ``path``'s suffix, for writers that pick the format by it.
    """
    return path.with_name(f".tmp{os.getpid()}-{path.name}" if keep_suffix else f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temporary file next to ``path``, synced, then renamed over ``path``: a kill at
    any moment leaves the old file or the new one, never a mix; a failing ``write`` leaves no temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a writer killed mid-save
        stale.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text, cut at a word boundary near ``limit`` characters; the
    exception's type name when it has no text. Library errors often run to many lines; ours are one."""
    text = " ".join((getattr(e, "error_string", None) or str(e)).strip().splitlines()[:1]).strip()
    return shorten(text, limit) if text else type(e).__name__


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, marked with '...'."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else text[: limit - 3]).rstrip(" ,;:") + "..."

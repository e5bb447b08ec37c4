"""Small helpers every package uses: atomic file writes and one-line error reasons."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional


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


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: tensors and numpy scalars or arrays as numbers and lists, and non-finite
    floats as None (bare NaN / Infinity, which ``json.dumps`` writes by default, is not JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    elif hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays, tensors
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(value)``; ``allow_nan=False`` guards against a NaN slipping through."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def is_disk_full(e: BaseException) -> bool:
    """True when ``e``, or an error it was raised from, is ENOSPC / EDQUOT: torch.save reports a full disk as
    a RuntimeError ("unexpected pos ...") raised while handling the OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def write_refused(e: BaseException) -> Optional[OSError]:
    """The OSError behind ``e`` (or ``e``) that refused a write: a folder turned read-only (EROFS), or one this
    user may no longer write (EACCES, EPERM); None for any other error."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return e
        e = e.__cause__ or e.__context__
    return None


def no_space_message(path: str | Path, need_bytes: Optional[int] = None) -> str:
    """'no space left on MOUNT (need ~N MB, M MB free)': the filesystem that holds ``path`` and is full."""
    path = Path(path).absolute()
    mount = next((p for p in (path, *path.parents) if p.exists() and os.path.ismount(p)), Path("/"))
    existing = next((p for p in (path, *path.parents) if p.exists()), mount)
    try:
        free = f"{shutil.disk_usage(existing).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    need = f"need ~{max(0.1, need_bytes / 1e6):.1f} MB, " if need_bytes else ""
    return f"no space left on {mount} ({need}{free})"

"""Safe, atomic checkpoint files: written to a temporary name and renamed into place, so a crash (or ``kill -9``)
mid-write never leaves a broken file; loaded with ``weights_only=True``, so a file from elsewhere cannot run code.
Both the best model (:mod:`sctrain.artifacts.best`) and training's resume states are written this way.
"""
from __future__ import annotations

import codecs
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sctrain.utils import atomic_write, no_space_message, shorten


class CheckpointError(RuntimeError):
    """A missing, truncated, corrupt or foreign checkpoint; the message names the file."""


class DiskFull(CheckpointError):
    """A checkpoint did not fit on its filesystem; nothing partial is left, the previous files are intact."""


def payload_bytes(obj: Any) -> int:
    """About what ``torch.save(obj)`` writes: the tensors' bytes, plus room for the rest."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values()) + 64
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj) + 64
    return 64


def disk_full(path: Path, obj: Any) -> DiskFull:
    return DiskFull(f"{no_space_message(path, payload_bytes(obj))} while saving {path}; free some space and run "
                    "the same command again: it resumes from the last saved state")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _torch_reason(e: BaseException) -> str:
    """The telling part of a ``torch.load`` error, one line: weights-only errors put it after a paragraph of
    advice, reader errors before sentences of it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("WeightsUnpickler error:", 1)[-1]
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?", "", text)  # C++ source location, no news to the user
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return shorten(lines[0].split(". ")[0].rstrip("."), 120) if lines else type(e).__name__


_TORCH_ZIP = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_TORCH_LEGACY = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # the older one's magic number


def _load_failure(path: Path, e: Exception) -> str:
    """Why ``torch.load`` refused ``path``, judged by the file's first bytes: torch's errors depend on the kind of
    file (a bare EOFError for an empty one, a weights-only paragraph for random bytes) and rarely name it."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        return f"checkpoint {path} cannot be read ({err.strerror or err})"
    reason = _torch_reason(e)
    if not head:
        return f"checkpoint {path} is truncated or corrupt (the file is empty)"
    if head.startswith((_TORCH_ZIP, _TORCH_LEGACY)) or _TORCH_ZIP.startswith(head):  # torch wrote it (or began to)
        if isinstance(e, pickle.UnpicklingError) and reason.startswith("Unsupported global"):
            found = re.search(r"GLOBAL (\S+)", reason)
            return (f"checkpoint {path} cannot be loaded safely (it holds {found.group(1) if found else 'an object'}, "
                    "which weights-only loading refuses)")
        return f"checkpoint {path} is truncated or corrupt ({reason})"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at byte 64 is no error
    except UnicodeDecodeError:
        text = None
    if head[0] == 0x80:
        what = "a plain pickle, not a file torch.save wrote"
    elif text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        what = f"a text file starting {shorten((text.strip().splitlines() or [''])[0], 60)!r}"
    else:
        what = f"neither a torch zip archive nor a pickle, first bytes {head[:4].hex(' ')}"
    # "corrupt or foreign": random bytes may be a checkpoint overwritten or a file that never was one
    return f"{path} is not a checkpoint (corrupt or foreign: {what})"


def safe_load(path: str | Path, expected_format: str) -> dict:
    """Load a checkpoint as plain data; one-line :class:`CheckpointError` for every way it can be bad.

    ``weights_only=True`` restricts unpickling to tensors and plain containers, so a crafted file cannot
    run code: it is rejected like a corrupt one.
    """
    path = Path(path)
    if path.is_dir():  # load_state looks inside a state folder itself; a folder here is a wrong path
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (KeyError, UnicodeDecodeError, ...)
        raise CheckpointError(_load_failure(path, e)) from None
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"checkpoint {path} is not an {expected_format} checkpoint (format: {found!r})")
    return obj

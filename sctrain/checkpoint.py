"""Atomic, plain-data checkpoints: the best model (``best_sc.pt``) and full training states for resume.

Everything is written to a temporary name and renamed into place, so a crash (or ``kill -9``) mid-write
never leaves a broken ``best_sc.pt`` or state; everything loads with ``weights_only=True``, so a file from
elsewhere cannot run code.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

BEST_FORMAT = "sctrain-best/1"
STATE_FORMAT = "sctrain-state/1"
STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A missing, truncated, corrupt or foreign checkpoint; the message names the file."""


def _fsync_dir(path: Path) -> None:
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


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def safe_load(path: str | Path, expected_format: str) -> dict:
    """Load a checkpoint as plain data; one-line :class:`CheckpointError` for every way it can be bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason[:160]})") from None
    except Exception as e:  # noqa: BLE001 - pickle errors of many kinds: all mean "not ours"
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"checkpoint {path} is not an {expected_format} checkpoint (format: {found!r})")
    return obj


def plain_state_dict(model: torch.nn.Module) -> dict:
    """The uncompiled model's weights on the CPU (no ``_orig_mod.``/``module.`` prefixes)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_best(path: str | Path, model: torch.nn.Module, labels: list[str], config: dict, metrics: dict) -> None:
    atomic_save({"format": BEST_FORMAT, "model": plain_state_dict(model), "labels": list(labels),
                 "config": config, "metrics": metrics}, path)


def load_best(path: str | Path) -> dict:
    ckpt = safe_load(path, BEST_FORMAT)
    for key in ("model", "labels", "config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return ckpt


# ----------------------------------------------------------------------------------- training states

def state_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "state"


def save_state(output_dir: str | Path, step: int, payload: dict, keep_last: int) -> Path:
    """Write ``state/step_XXXXXXXX`` atomically (temp folder, then rename) and prune old states."""
    root = state_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    tmp = root / f".tmp-step_{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save({"format": STATE_FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    (tmp / "meta.json").write_text(json.dumps({"step": step, "epoch": payload.get("progress", {}).get("epoch"),
                                               "time": time.time()}))
    slow = float(os.environ.get("SCTRAIN_TEST_SLOW_SAVE", "0") or 0)
    if slow > 0:  # test hook: widens the window in which a kill lands mid-save
        time.sleep(slow)
    if final.exists():  # the same step saved twice (epoch end right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_states(output_dir)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):  # left by a writer killed mid-save
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def list_states(output_dir: str | Path) -> list[Path]:
    """Complete states, newest first."""
    root = state_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)


def load_state(path: str | Path) -> dict:
    path = Path(path)
    return safe_load(path / STATE_FILE if path.is_dir() else path, STATE_FORMAT)


def load_latest_state(output_dir: str | Path) -> tuple[Optional[Path], Optional[dict]]:
    """The newest state that loads; a corrupt one is reported and the previous one used."""
    for path in list_states(output_dir):
        try:
            return path, load_state(path)
        except CheckpointError as e:
            log.warning("%s; falling back to the previous state", e)
    return None, None

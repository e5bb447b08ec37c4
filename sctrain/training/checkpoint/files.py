"""Training states for resume (``state/step_N/state.pt``), written and loaded like every checkpoint file
(:mod:`sctrain.artifacts.files`: atomic, weights-only). The best model's file is :mod:`sctrain.artifacts.best`."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from sctrain.artifacts.files import CheckpointError, disk_full, safe_load
from sctrain.utils import fsync_dir, is_disk_full

log = logging.getLogger(__name__)

STATE_FORMAT = "sctrain-state/1"
STATE_FILE = "state.pt"


def state_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "state"


def _write_state_file(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_state(output_dir: str | Path, step: int, payload: dict, keep_last: int) -> Path:
    """Write ``state/step_XXXXXXXXX`` atomically (temporary folder, then rename) and prune old states.

    A state of the same step (epoch end right after a periodic save, or a resumed run saving again) is
    moved aside before the rename and deleted after it; :func:`list_states` still finds the moved copy if
    a kill lands between the two renames.
    """
    root = state_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    tmp = root / f".tmp-step_{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_state_file(tmp / STATE_FILE, {"format": STATE_FORMAT, **payload})
        (tmp / "meta.json").write_text(json.dumps({"step": step, "epoch": payload.get("progress", {}).get("epoch"),
                                                   "time": time.time()}))
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial state would take the space the next try needs
        if is_disk_full(e):
            raise disk_full(final, payload) from None
        raise
    aside = None
    if final.exists():
        aside = root / f".old-step_{step:09d}-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
    os.rename(tmp, final)
    fsync_dir(root)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    for old in list_states(output_dir)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:  # left by writers killed mid-save
        log.info("removing %s, left by an interrupted save", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return final


_STATE_NAME = re.compile(r"^(?:\.old-)?step_(\d+)(?:-\d+)?$")


def _state_step(path: Path) -> Optional[int]:
    match = _STATE_NAME.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def list_states(output_dir: str | Path) -> list[Path]:
    """Complete states, newest first; temporary folders of interrupted saves are ignored."""
    root = state_dir(output_dir)
    if not root.is_dir():
        return []
    states = {_state_step(p): p for p in root.glob("step_*") if _state_step(p) is not None}
    for moved in root.glob(".old-step_*"):  # a save was killed between moving this aside and renaming its successor
        if _state_step(moved) is not None:
            states.setdefault(_state_step(moved), moved)
    return [states[step] for step in sorted(states, reverse=True)]


def set_aside_states(output_dir: str | Path) -> Optional[Path]:
    """Move an earlier run's states out of the way (``train.resume=never``): kept, but never resumed or pruned."""
    root = state_dir(output_dir)
    if not list_states(output_dir):
        return None
    target = root.with_name(f"state.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.rename(root, target)
    log.warning("train.resume=never: moved the earlier training states to %s", target)
    return target


REQUIRED_STATE_KEYS = ("progress", "model", "optimizer", "scheduler", "rng")


def load_state(path: str | Path) -> dict:
    """One training state (a ``step_*`` folder or its ``state.pt``), checked for the parts resume needs."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    state = safe_load(file, STATE_FORMAT)
    missing = [key for key in REQUIRED_STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"training state {file} is incomplete (lacks {', '.join(missing)})")
    return state


def load_latest_state(output_dir: str | Path) -> tuple[Optional[Path], Optional[dict]]:
    """The newest state that loads; a corrupt one is reported and the previous one used.

    ``(None, None)`` when there is no state; an error when there are states but none loads (starting over
    would silently discard the run).
    """
    states = list_states(output_dir)
    for path in states:
        try:
            return path, load_state(path)
        except CheckpointError as e:
            log.warning("%s; falling back to the previous state", e)
    if states:
        raise CheckpointError(f"none of the {len(states)} training states in {state_dir(output_dir)} loads; "
                              "move them away or set train.resume=never to start over")
    return None, None

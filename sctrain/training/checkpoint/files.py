"""Atomic, plain-data checkpoints: the best model (``best_sc.pt``) and full training states for resume.

Everything is written to a temporary name and renamed into place, so a crash (or ``kill -9``) mid-write
never leaves a broken ``best_sc.pt`` or state; everything loads with ``weights_only=True``, so a file from
elsewhere cannot run code.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch

from sctrain.utils import atomic_write, fsync_dir, is_disk_full, no_space_message, shorten

log = logging.getLogger(__name__)

BEST_FORMAT = "sctrain-best/1"
STATE_FORMAT = "sctrain-state/1"
STATE_FILE = "state.pt"


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


def _disk_full(path: Path, obj: Any) -> DiskFull:
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


def plain_state_dict(model: torch.nn.Module) -> dict:
    """The uncompiled model's weights on the CPU (no ``_orig_mod.``/``module.`` prefixes)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_best(path: str | Path, model: torch.nn.Module, labels: list[str], config: dict, metrics: dict) -> None:
    obj = {"format": BEST_FORMAT, "model": plain_state_dict(model), "labels": list(labels), "config": config,
           "metrics": metrics}
    try:
        atomic_save(obj, path)
    except (OSError, RuntimeError) as e:  # atomic_write has removed its temporary file
        if is_disk_full(e):
            raise _disk_full(Path(path), obj) from None
        raise


def store_thresholds(path: str | Path, thresholds: dict[str, float], detector: dict | None = None) -> None:
    """Add per-keyword detection thresholds (plain ``{label: float}``) and the detector rules they were
    chosen under (``DetectorRules.to_dict()``) to the ``best_sc.pt`` at ``path``, rewritten atomically;
    inference uses both by default (:attr:`LoadedModel.thresholds`, :attr:`LoadedModel.rules`)."""
    ckpt = load_best(path)
    ckpt["thresholds"] = {str(k): float(v) for k, v in thresholds.items()}
    if detector is not None:
        ckpt["detector"] = dict(detector)
    atomic_save(ckpt, path)


def load_best(path: str | Path) -> dict:
    ckpt = safe_load(path, BEST_FORMAT)
    for key in ("model", "labels", "config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return ckpt


# ----------------------------------------------------------------------------------- training states

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
            raise _disk_full(final, payload) from None
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

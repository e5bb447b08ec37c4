"""Metrics sinks behind one object: ``metrics.jsonl`` always, W&B when enabled; a no-op off rank 0.

The training loop calls the same methods on every rank; only rank 0 gets a :class:`Tracker` that writes,
so the loop carries no rank checks. W&B lives in :mod:`sctrain.tracking.wandb_run`, imported only when enabled: with
``tracking.wandb=false`` (or ``tracking.mode=disabled``) nothing imports or contacts wandb.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sctrain.utils import atomic_write, json_text

log = logging.getLogger(__name__)


def exit_code_in_flight() -> int:
    """The exit code the exception now propagating will give (0 when none): for a ``finally`` clause."""
    error = sys.exc_info()[1]
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def last_logged_step(path: str | Path) -> int:
    """Highest step among the last records of ``metrics.jsonl`` (-1 when there is none).

    Rank 0 writes every record here and to W&B alike, so this is where a restarted W&B run stands, even
    offline, where W&B itself cannot tell. Only the tail is read: steps only go up within a file's end.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
    except FileNotFoundError:
        return -1
    steps = []
    for line in tail.splitlines()[-50:]:
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):  # a line cut by a kill, or the cut start of the tail
            continue
        if isinstance(step, int):
            steps.append(step)
    return max(steps, default=-1)


class NullTracker:
    """What ranks other than 0 get: every call does nothing."""

    run_id: Optional[str] = None
    wants_examples: int = 0  # validation clips log_eval would like to receive (0 = don't compute them)

    def log_config(self, config: dict) -> None: ...
    def rewind(self, step: int) -> None: ...
    def log_train(self, step: int, metrics: dict) -> None: ...
    def log_eval(self, step: int, epoch: int, split: str, result: "Any", examples: Optional[dict] = None) -> None: ...
    def log_selection(self, step: int, epoch: int, metrics: dict) -> None: ...
    def log_results(self, results: dict, best_path: Optional[Path] = None) -> None: ...
    def finish(self, exit_code: Optional[int] = None) -> None: ...


class Tracker(NullTracker):
    """Rank 0's sink: appends JSON lines to ``output_dir/metrics.jsonl``, forwards to W&B if enabled, and
    writes the local report (PNGs + report.md) with the results."""

    def __init__(self, output_dir: str | Path, wandb_run: Any = None, report: bool = False) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb_run  # a sctrain.tracking.wandb_run.WandbRun, or None
        self.run_id = getattr(wandb_run, "id", None)
        self.wants_examples = getattr(wandb_run, "log_examples", 0)
        self.report = report
        self._finished = False

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json_text({"time": round(time.time(), 3), **record}) + "\n")

    def log_config(self, config: dict) -> None:
        if self.wandb is not None:
            self.wandb.log_config(config)

    def rewind(self, step: int) -> None:
        """Drop the records after ``step`` (and any results) from ``metrics.jsonl``: a run resumed from the
        state of ``step`` logs those steps again, and the file should hold one history, not the killed
        attempt's steps followed by their repeats. Lines cut by a kill go too. Atomic: a kill now leaves
        either file.

        W&B cannot drop what it has: it keeps the first attempt's steps and skips their repeats
        (see :class:`sctrain.tracking.wandb_run.WandbRun`)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            # Step-less records are the end-of-run results: the resumed run writes its own.
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        if len(kept) == len(lines):
            return
        atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))
        log.info("metrics.jsonl: dropped %d records after step %d, which this run writes again",
                 len(lines) - len(kept), step)

    def log_train(self, step: int, metrics: dict) -> None:
        self._write({"kind": "train", "step": step, **metrics})
        if self.wandb is not None:
            self.wandb.log_train(step, metrics)

    def log_eval(self, step: int, epoch: int, split: str, result: Any, examples: Optional[dict] = None) -> None:
        self._write({"kind": "eval", "split": split, "step": step, "epoch": epoch, **result.summary(),
                     "confusion": result.confusion.tolist(), "labels": result.labels})
        if self.wandb is not None:
            self.wandb.log_eval(step, epoch, split, result, examples)

    def log_selection(self, step: int, epoch: int, metrics: dict) -> None:
        """A checkpoint's detection score on the selection streams (kws.select_by=detection)."""
        self._write({"kind": "selection", "step": step, "epoch": epoch, **metrics})
        if self.wandb is not None:
            self.wandb.log_selection(step, epoch, metrics)

    def log_results(self, results: dict, best_path: Optional[Path] = None) -> None:
        self._write({"kind": "results", **results})
        if self.wandb is not None:
            self.wandb.log_results(results, best_path)
        if self.report:
            from .report import write_report_or_skip
            write_report_or_skip(self.path.parent)

    def finish(self, exit_code: Optional[int] = None) -> None:
        """Close the W&B run (once). Without ``exit_code``, an exception in flight decides it (preemption: 75)."""
        if self._finished:
            return
        self._finished = True
        if self.wandb is not None:
            self.wandb.finish(exit_code_in_flight() if exit_code is None else exit_code)


def make_tracker(is_main: bool, output_dir: str | Path, tracking_cfg: Any = None,
                 config: Optional[dict] = None, resume_id: Optional[str] = None) -> NullTracker:
    """Rank 0: a :class:`Tracker` (with a W&B run when ``tracking_cfg.wandb``); other ranks: a no-op."""
    if not is_main:
        return NullTracker()
    wandb_run = None
    if tracking_cfg is not None and tracking_cfg.wandb and tracking_cfg.mode != "disabled":
        from sctrain.tracking.wandb_run import WandbRun  # the only place wandb gets imported
        first_step = last_logged_step(Path(output_dir) / "metrics.jsonl") + 1 if resume_id else 0
        wandb_run = WandbRun.start(output_dir, tracking_cfg, config or {}, resume_id, first_step)
    return Tracker(output_dir, wandb_run, report=bool(tracking_cfg is not None and tracking_cfg.report))


@torch.no_grad()
def collect_examples(model: torch.nn.Module, frontend: torch.nn.Module, split: Any, labels: list[str], count: int,
                     device: torch.device, sample_rate: int = 16000) -> Optional[dict]:
    """``count`` fixed validation clips with their log-mel and the model's prediction (None when count is 0).

    The clips are spread evenly over the split (sorted by word, so they show different words) and are the
    same every epoch, so the dashboard shows one clip's prediction changing. Runs on the calling rank only.
    """
    count = min(count, len(split))
    if count <= 0:
        return None
    index = np.unique(np.linspace(0, len(split) - 1, count).round().astype(np.int64))
    audio = torch.from_numpy(np.asarray(split.audio[index]))
    modes = model.training, frontend.training
    model.eval()
    frontend.eval()
    features = frontend(audio.to(device))
    probs = model(features).float().softmax(-1)
    model.train(modes[0])
    frontend.train(modes[1])
    prob, top = probs.max(-1)
    return {"files": [split.files[i] for i in index],
            "true": [labels[int(split.labels[i])] for i in index],
            "predicted": [labels[int(t)] for t in top.tolist()],
            "prob": prob.tolist(),
            "logmel": features[:, 0].float().cpu().numpy(),  # [N, n_mels, frames]
            "audio": audio.float().numpy() / 32768.0,
            "sample_rate": sample_rate}

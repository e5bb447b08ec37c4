"""The Weights & Biases side of the tracker: one W&B run per training run, kept across restarts.

Imported only when ``tracking.wandb`` is on (it imports wandb). Keys: ``train/*`` per logging step,
``val/*`` per epoch, ``test/*`` and ``latency/*`` at the end; the W&B step is the global optimizer step.
A resumed run passes its stored run id back in; W&B steps it already holds are not logged twice.
"""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import numpy as np

from sctrain.config import ConfigError
from sctrain.utils import first_line

try:
    import wandb
except ImportError:  # pragma: no cover - the wandb extra is installed in CI
    wandb = None

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.wandb.ai"


def has_api_key() -> bool:
    """True when wandb would find an API key: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(requested: str) -> Optional[str]:
    """The ``mode`` for ``wandb.init``: ``auto`` -> online with an API key, else offline; ``None`` leaves the
    choice to a ``WANDB_MODE`` the user exported."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if has_api_key() else "offline"


def _flat(prefix: str, values: dict) -> dict:
    """``{'a': {'b': 1}}`` -> ``{'prefix/a/b': 1}``: nested results become chartable scalars."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(_flat(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def _spectrogram_image(logmel: np.ndarray) -> np.ndarray:
    """``[n_mels, frames]`` -> uint8 image, low frequencies at the bottom, 0..255 over the clip's range."""
    low, high = float(logmel.min()), float(logmel.max())
    scaled = (logmel - low) / max(high - low, 1e-6)
    return (np.flipud(scaled) * 255).round().astype(np.uint8)


class WandbRun:
    """One live W&B run; :class:`sctrain.tracking.tracker.Tracker` forwards every call here."""

    def __init__(self, run: Any, log_examples: int, first_step: int = 0) -> None:
        self.run = run
        self.id: str = run.id
        self.log_examples = log_examples
        # After a restart the run already holds the steps logged between the last saved state and the
        # restart; training repeats them, but W&B steps must increase, so they are skipped (one log line).
        # Online, W&B's starting_step says where the run ended; offline, metrics.jsonl does (first_step).
        self.first_step = max(first_step, int(getattr(run, "starting_step", 0) or 0))
        self._skipped = False

    @classmethod
    def start(cls, output_dir: str | Path, cfg: Any, config: dict, resume_id: Optional[str] = None,
              first_step: int = 0) -> "WandbRun":
        """Start (or, with ``resume_id``, continue) the run; ``first_step``: the lowest step still to log."""
        if wandb is None:
            raise ConfigError("config key 'tracking.wandb': true, but the wandb package is not installed "
                              "(pip install 'sctrain[wandb]', or set tracking.wandb=false)")
        output_dir = Path(output_dir).resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
        mode = resolve_mode(cfg.mode)
        if cfg.mode == "auto" and mode == "offline":
            log.info("W&B: no API key found (WANDB_API_KEY or ~/.netrc), logging offline to %s/wandb "
                     "(upload later with: wandb sync %s/wandb/offline-run-*)", output_dir, output_dir)
        kwargs = dict(project=cfg.project, entity=cfg.entity, name=cfg.name or output_dir.name, group=cfg.group,
                      tags=list(cfg.tags) or None, config=config, dir=str(output_dir), job_type="train", mode=mode)
        if resume_id:
            kwargs.update(id=resume_id, resume="allow")
        try:
            run = wandb.init(**kwargs)
        except Exception as e:  # noqa: BLE001 - no network / bad key must not cost the training run
            if mode == "offline" or cfg.mode == "online":
                raise
            reason = first_line(e)
            log.warning("W&B: could not start an online run (%s); logging offline instead", reason)
            run = wandb.init(**{**kwargs, "mode": "offline"})
        run.define_metric("val/acc", summary="max")
        run.define_metric("val/loss", summary="min")
        wandb_run = cls(run, cfg.log_examples, first_step if resume_id else 0)
        log.info("W&B run %s (%s)%s", run.id, "offline" if run.offline else run.url,
                 f", continued from step {wandb_run.first_step}" if resume_id else "")
        return wandb_run

    def _log(self, data: dict, step: int) -> None:
        if step < self.first_step:
            if not self._skipped:
                log.info("W&B: steps below %d were logged before the restart; not logging them again",
                         self.first_step)
                self._skipped = True
            return
        self.run.log(data, step=step)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_train(self, step: int, metrics: dict) -> None:
        self._log({f"train/{k}": v for k, v in metrics.items()}, step)

    def log_selection(self, step: int, epoch: int, metrics: dict) -> None:
        self._log({**{f"selection/{k}": v for k, v in metrics.items()}, "selection/epoch": epoch}, step)

    def log_eval(self, step: int, epoch: int, split: str, result: Any, examples: Optional[dict] = None) -> None:
        prefix = {"validation": "val"}.get(split, split)
        data = {f"{prefix}/loss": result.loss, f"{prefix}/acc": result.accuracy, f"{prefix}/count": result.count,
                f"{prefix}/epoch": epoch}
        data.update({f"{prefix}/per_class_acc/{name}": acc for name, acc in result.per_class_accuracy.items()
                     if acc is not None})
        data[f"{prefix}/confusion_matrix"] = self._confusion_plot(result, f"{split} confusion matrix")
        if examples:
            data[f"{prefix}/examples"] = self._examples_table(examples)
        self._log(data, step)

    @staticmethod
    def _confusion_plot(result: Any, title: str) -> Any:
        # W&B's own chart takes per-clip labels: expand the summed counts back into (true, predicted) pairs.
        matrix = np.asarray(result.confusion)
        true, pred = np.nonzero(matrix)
        counts = matrix[true, pred]
        return wandb.plot.confusion_matrix(y_true=np.repeat(true, counts).tolist(),
                                           preds=np.repeat(pred, counts).tolist(),
                                           class_names=list(result.labels), title=title)

    @staticmethod
    def _examples_table(examples: dict) -> Any:
        table = wandb.Table(columns=["file", "true", "predicted", "prob", "log_mel", "audio"])
        for i, file in enumerate(examples["files"]):
            caption = f"true {examples['true'][i]} / predicted {examples['predicted'][i]}"
            table.add_data(file, examples["true"][i], examples["predicted"][i], round(float(examples["prob"][i]), 4),
                           wandb.Image(_spectrogram_image(examples["logmel"][i]), caption=caption),
                           wandb.Audio(np.asarray(examples["audio"][i], dtype=np.float32),
                                       sample_rate=examples["sample_rate"], caption=caption))
        return table

    def log_results(self, results: dict, best_path: Optional[Path] = None) -> None:
        """Final numbers into the run summary (always visible, even when the step was already logged)."""
        # Every number of results.json: test and per-class test accuracy, latency, throughput, parameters.
        self.run.summary.update(_flat("results", results))
        per_class = {k: v for k, v in (results.get("per_class_test_acc") or {}).items() if v is not None}
        if per_class:
            table = wandb.Table(columns=["label", "test_acc"], data=[[k, v] for k, v in per_class.items()])
            self._log({"test/per_class_acc_chart": wandb.plot.bar(table, "label", "test_acc",
                                                                  title="per-class test accuracy")},
                      int(results.get("steps") or 0))
        if best_path is not None and Path(best_path).is_file():
            artifact = wandb.Artifact(f"model-{self.id}", type="model",
                                      metadata={k: results.get(k) for k in ("val_acc", "test_acc", "best_epoch",
                                                                            "params", "labels")})
            artifact.add_file(str(best_path), name="best_sc.pt")
            self.run.log_artifact(artifact, aliases=["best", "latest"])

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

"""``best_sc.pt``: the contract between training and deployment.

Training writes it (:func:`save_best`, then calibration's :func:`store_thresholds`); inference, export and the
stream evaluation read it (:func:`load_best`). It holds plain data only: ``format``, ``model`` (the uncompiled
weights), ``labels``, ``config`` (the run's whole config as a dict), ``metrics``, and after calibration
``thresholds`` (``{keyword: float}``), ``detector`` (the :class:`~sctrain.artifacts.detector.DetectorRules` they
were chosen under) and ``calibration`` (how they were chosen: the streams, their hours, the false-alarm bound).
"""
from __future__ import annotations

from pathlib import Path

import torch

from sctrain.artifacts.files import CheckpointError, atomic_save, disk_full, safe_load
from sctrain.utils import is_disk_full

BEST_FORMAT = "sctrain-best/1"
REQUIRED_KEYS = ("model", "labels", "config")


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
            raise disk_full(Path(path), obj) from None
        raise


def store_thresholds(path: str | Path, thresholds: dict[str, float], detector: dict | None = None,
                     calibration: dict | None = None) -> None:
    """Add per-keyword detection thresholds (plain ``{label: float}``) and the detector rules they were
    chosen under (``DetectorRules.to_dict()``) to the ``best_sc.pt`` at ``path``, rewritten atomically;
    inference uses both by default (:attr:`LoadedModel.thresholds`, :attr:`LoadedModel.rules`)."""
    ckpt = load_best(path)
    ckpt["thresholds"] = {str(k): float(v) for k, v in thresholds.items()}
    if detector is not None:
        ckpt["detector"] = dict(detector)
    if calibration is not None:  # plain data: settings, hours, bounds, which audio (for the next reader)
        ckpt["calibration"] = dict(calibration)
    atomic_save(ckpt, path)


def load_best(path: str | Path) -> dict:
    ckpt = safe_load(path, BEST_FORMAT)
    for key in ("model", "labels", "config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return ckpt

"""A ``best_sc.pt`` back as the raw-audio classifier it was trained as, with its CPU inference copy, the
detection thresholds calibrated for it and the detector rules they were calibrated under."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from torch import nn

from sctrain.artifacts.best import load_best
from sctrain.artifacts.detector import DetectorRules
from sctrain.artifacts.files import CheckpointError
from sctrain.audio.features import LogMel
from sctrain.config import Config, ConfigError, config_from_dict
from sctrain.models.classifier import AudioClassifier
from sctrain.models.registry import cpu_inference_copy, create_model


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the raw-audio classifier (eval mode, CPU) and what it needs."""

    classifier: AudioClassifier
    labels: list[str]
    config: Config
    path: Path
    metrics: dict = field(default_factory=dict)
    # Per-keyword detection thresholds calibrated after training ({} for a checkpoint without: 0.5 applies).
    thresholds: dict[str, float] = field(default_factory=dict)
    # The detector rules stored with the thresholds (None for a checkpoint without: its config's kws rules apply).
    rules: DetectorRules | None = None
    # How the thresholds were chosen (settings, hours, bounds, audio; None for a checkpoint calibrated before).
    calibration: dict | None = None

    @property
    def net(self) -> nn.Module:
        return self.classifier.net

    @property
    def features(self) -> LogMel:
        return self.classifier.features

    @cached_property
    def cpu_net(self) -> nn.Module:
        """The family's CPU inference copy of :attr:`net` (:mod:`sctrain.models.folding`); its class's
        ``description`` says what it changed."""
        return cpu_inference_copy(self.config.model, self.net)

    @cached_property
    def cpu_classifier(self) -> AudioClassifier:
        """The same function as :attr:`classifier`, faster on the CPU (see :attr:`cpu_net`)."""
        return AudioClassifier(self.features, self.cpu_net).eval()


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the :class:`AudioClassifier` a ``best_sc.pt`` was trained as; :class:`CheckpointError` if it
    is missing, corrupt, from another version, or its weights do not fit the model its config describes."""
    path = Path(path)
    ckpt = load_best(path)
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read ({e})") from None
    labels = ckpt["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"checkpoint {path} has no valid label list")
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"checkpoint {path}: 'model' is not a state dict")
    net = create_model(cfg.model, cfg.features, len(labels))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing/unexpected keys or shapes: another model family or version
        lines = str(e).strip().splitlines()  # torch's first line only says "Error(s) in loading state_dict"
        reason = " ".join(lines[1:2] or lines[:1]).strip()[:160]
        raise CheckpointError(f"checkpoint {path}: weights do not fit the {cfg.model.name} its config describes "
                              f"({len(labels)} labels; {reason})") from None
    classifier = AudioClassifier(LogMel(cfg.features), net).eval()
    metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), dict) else {}
    calibration = ckpt.get("calibration") if isinstance(ckpt.get("calibration"), dict) else None
    return LoadedModel(classifier, list(labels), cfg, path, metrics, _thresholds(ckpt, labels, path),
                       _rules(ckpt, path), calibration)


def _thresholds(ckpt: dict, labels: list[str], path: Path) -> dict[str, float]:
    """The checkpoint's ``thresholds``, checked: a bad one would only surface at the first detection."""
    stored = ckpt.get("thresholds") or {}
    ok = isinstance(stored, dict) and all(k in labels and isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and 0 < v <= 1 for k, v in stored.items())
    if not ok:
        raise CheckpointError(f"checkpoint {path}: 'thresholds' must map its labels to numbers in (0, 1]")
    return {k: float(v) for k, v in stored.items()}


def _rules(ckpt: dict, path: Path) -> DetectorRules | None:
    """The checkpoint's ``detector`` rules, checked like its thresholds."""
    if ckpt.get("detector") is None:
        return None
    try:
        return DetectorRules.from_dict(ckpt["detector"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: bad 'detector' rules ({e})") from None

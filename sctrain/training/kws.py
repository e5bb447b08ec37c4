"""After training: per-keyword detection thresholds calibrated on a validation stream and stored in
``best_sc.pt``, and the detector evaluated on a test stream (config section ``kws``).

The streams, scoring and calibration are :mod:`sctrain.streameval`'s, with the settings of
``python -m sctrain.streameval`` (test stream seed 0, validation stream seed 1, the config's detector rules), so
that command run on the same checkpoint reproduces the numbers. The stored thresholds are what
:class:`sctrain.inference.streaming.StreamingDetector`, ``python -m sctrain.predict --stream`` and exported
files (``sctrain.thresholds``) use by default, with the detector rules they were chosen under
(``kws.smooth``, ``kws.refractory_ms``, ``kws.filler_gate``; stored next to them as ``detector``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from sctrain.artifacts.best import store_thresholds
from sctrain.artifacts.labels import SILENCE
from sctrain.audio.io import AudioError
from sctrain.config import Config
from sctrain.data.dataset import PackedDataset
from sctrain.data.speechcommands import DatasetError
from sctrain.inference.events import EventDecoder
from sctrain.inference.loading import LoadedModel
from sctrain.streameval.calibrate import Calibration, calibrate
from sctrain.streameval.data import split_stream
from sctrain.streameval.evaluate import evaluate
from sctrain.streameval.posteriors import stream_posteriors
from sctrain.streameval.report import write_report
from sctrain.streameval.scoring import Score
from sctrain.utils import first_line

log = logging.getLogger(__name__)

TEST_SEED, VALIDATION_SEED = 0, 1  # python -m sctrain.streameval's defaults (--seed 0, validation seed + 1)
REPORT_DIR = "streameval-test"  # where that command writes by default, next to the checkpoint
BRIEF = ("keywords_said", "hits", "wrong_labels", "misses", "false_alarms", "hours", "miss_rate", "fa_per_hour")


def stream_stage(cfg: Config, data: PackedDataset, model: LoadedModel, best_path: Path, out_dir: Path,
                 progress: bool = True) -> dict:
    """Calibrate and store thresholds and/or evaluate a test stream, as ``cfg.kws`` says; returns
    ``{"kws": summary}`` for ``results.json`` (``{}`` when both are off).

    A problem with the streams (e.g. a split without keyword clips) is logged and recorded as the
    summary's ``error``: the trained checkpoint is saved already and stays usable with 0.5 thresholds.
    """
    calibrating, test_minutes = cfg.kws.active(SILENCE in model.labels)
    if not (calibrating or test_minutes):
        return {}
    try:
        summary = _run(cfg, data, model, best_path, out_dir, calibrating, test_minutes, progress)
    except (ValueError, DatasetError, AudioError, OSError) as e:
        log.warning("keyword streams after training failed, no thresholds stored: %s", first_line(e))
        return {"kws": {"error": first_line(e)}}
    return {"kws": summary}


def _run(cfg: Config, data: PackedDataset, model: LoadedModel, best_path: Path, out_dir: Path, calibrating: bool,
         test_minutes: float, progress: bool) -> dict:
    # 100 ms hop and the kws rules, which the thresholds are chosen under and stored with.
    rules = cfg.kws.rules()
    decoder = EventDecoder(model.labels, **rules.decoder_kwargs())

    def runs(split: str, minutes: float, seed: int) -> list:
        stream = split_stream(data, split, minutes, seed)
        posteriors = stream_posteriors(model.cpu_classifier, stream.wave, decoder.hop, progress=progress,
                                       desc=f"scoring {split} windows")
        return [(posteriors, stream)]

    validation = runs("validation", cfg.kws.validation_minutes, VALIDATION_SEED) if calibrating else []
    summary: dict = {}
    calibration = None
    if test_minutes:
        test = runs("test", test_minutes, TEST_SEED)
        evaluation = evaluate(decoder, test, validation, cfg.kws.target_fa_per_hour)
        info = _info(best_path, data, test[0][1], evaluation, rules.to_dict())
        paths = write_report(evaluation, out_dir / REPORT_DIR, info)
        summary["test"] = {"minutes": test_minutes, "default": _brief(evaluation.default, model.labels)}
        if evaluation.calibrated is not None:
            summary["test"]["calibrated"] = _brief(evaluation.calibrated, model.labels)
        summary["report"] = str(paths["md"].relative_to(out_dir))
        calibration = evaluation.calibration
        log.info("test stream (%.1f min): miss rate %.1f %%, %.2f false alarms/h with %s thresholds; report in %s",
                 test_minutes, 100 * (evaluation.calibrated or evaluation.default).miss_rate(),
                 (evaluation.calibrated or evaluation.default).fa_per_hour(),
                 "calibrated" if calibration else "default", paths["md"].parent)
    elif validation:
        calibration = calibrate(decoder, validation, cfg.kws.target_fa_per_hour)
    if calibration is not None:
        store_thresholds(best_path, calibration.thresholds, rules.to_dict())
        summary.update(_calibration_summary(calibration, cfg, model.labels))
        summary["detector"] = rules.to_dict()
        log.info("calibrated thresholds for %g false alarms/h per keyword, stored in %s: %s",
                 calibration.target_fa_per_hour, best_path.name,
                 ", ".join(f"{k} {t:g}" for k, t in calibration.thresholds.items()))
    return summary


def _calibration_summary(calibration: Calibration, cfg: Config, labels: list[str]) -> dict:
    return {"thresholds": calibration.thresholds, "target_fa_per_hour": calibration.target_fa_per_hour,
            "met": calibration.met, "validation_minutes": cfg.kws.validation_minutes,
            "validation": _brief(calibration.validation, labels)}


def _brief(score: Score, labels: list[str]) -> dict:
    """The totals of a score (its per-keyword detail goes to the report)."""
    full = score.to_dict(labels)
    return {key: full[key] for key in BRIEF}


def _info(best_path: Path, data: PackedDataset, stream, evaluation, detector: dict) -> dict:
    """What the report says about the test stream (the keys ``python -m sctrain.streameval`` writes)."""
    root = Path(data.meta["root"])
    return {"checkpoint": str(best_path), "split": "test", "seed": TEST_SEED, "duration_s": stream.duration_s,
            "detector": detector,
            "sections": stream.sections, "keywords_said": sum(evaluation.default.truths.values()),
            "root": str(root), "noise": [str(root / p) for p in data.meta["background_files"]]}

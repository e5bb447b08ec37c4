"""After training: per-keyword detection thresholds calibrated on validation streams and stored in ``best_sc.pt``,
and the detector evaluated on test streams (config section ``kws``).

The streams, calibration and test are :class:`sctrain.streameval.pipeline.DetectorPipeline`'s, the same that
``python -m sctrain.streameval`` runs, so that command on the same checkpoint reproduces the numbers (and
``--store`` re-calibrates it without training). The stored thresholds are what
:class:`sctrain.inference.streaming.StreamingDetector`, ``python -m sctrain.predict --stream`` and exported files
use by default, with the detector rules they were chosen under and the settings and hours behind them.
"""
from __future__ import annotations

import logging
from pathlib import Path

from sctrain.artifacts.labels import SILENCE
from sctrain.audio.io import AudioError
from sctrain.config import Config
from sctrain.data.dataset import PackedDataset
from sctrain.data.speechcommands import DatasetError
from sctrain.inference.loading import LoadedModel
from sctrain.streameval.bounds import describe
from sctrain.streameval.calibrate import Calibration
from sctrain.streameval.pipeline import DetectorPipeline
from sctrain.streameval.report import info_for, write_report
from sctrain.streameval.scoring import Score
from sctrain.utils import first_line

log = logging.getLogger(__name__)

REPORT_DIR = "streameval-test"  # where python -m sctrain.streameval writes by default, next to the checkpoint
BRIEF = ("keywords_said", "hits", "wrong_labels", "misses", "false_alarms", "hours", "miss_rate", "fa_per_hour",
         "fa_per_hour_bound")


def stream_stage(cfg: Config, data: PackedDataset, model: LoadedModel, best_path: Path, out_dir: Path,
                 progress: bool = True) -> dict:
    """Calibrate and store thresholds and/or evaluate test streams, as ``cfg.kws`` says; returns
    ``{"kws": summary}`` for ``results.json`` (``{}`` when both are off).

    A problem with the streams (e.g. a split without keyword clips) is logged and recorded as the
    summary's ``error``: the trained checkpoint is saved already and stays usable with 0.5 thresholds.
    """
    calibrating, test_minutes = cfg.kws.active(SILENCE in model.labels)
    if not (calibrating or test_minutes):
        return {}
    try:
        pipeline = DetectorPipeline(model, data, cfg.kws.settings(test_minutes), cfg.kws.rules(), progress=progress)
        summary = _run(pipeline, best_path, out_dir, calibrating)
        if not pipeline.noise:  # python -m sctrain.streameval refuses this; a finished training only says it
            summary["noise"] = (f"none: {data.meta['root']} has no _background_noise_, so the streams put the words "
                                "over digital silence and their false-alarm figures do not hold for a room")
            log.warning("keyword streams: no noise recordings: %s", summary["noise"])
    except (ValueError, DatasetError, AudioError, OSError) as e:
        log.warning("keyword streams after training failed, no thresholds stored: %s", first_line(e))
        return {"kws": {"error": first_line(e)}}
    return {"kws": summary}


def _run(pipeline: DetectorPipeline, best_path: Path, out_dir: Path, calibrating: bool) -> dict:
    settings, labels = pipeline.settings, pipeline.model.labels
    summary: dict = {"detector": pipeline.rules.to_dict(), "settings": settings.to_dict()}
    calibration = pipeline.calibrate() if calibrating else None
    if calibration is not None:
        pipeline.store(best_path, calibration)
        summary.update(calibration_summary(calibration, labels))
        _log_calibration(calibration, best_path)
    if settings.test_minutes:
        evaluation = pipeline.evaluate("test", calibration)
        info = info_for(str(best_path), "test", settings.seed, pipeline, evaluation)
        paths = write_report(evaluation, out_dir / REPORT_DIR, info)
        summary["test"] = {"minutes": settings.test_minutes, "audio": info["audio"],
                           "default": brief(evaluation.default, labels)}
        if evaluation.calibrated is not None:
            summary["test"]["calibrated"] = brief(evaluation.calibrated, labels)
        summary["report"] = str(paths["md"].relative_to(out_dir))
        shown = evaluation.calibrated or evaluation.default
        log.info("test streams (unseen speakers and noise, %.2f h): miss rate %.1f %%, false alarms %s with %s "
                 "thresholds; report in %s", shown.total_hours, 100 * shown.miss_rate(),
                 describe(shown.fa_count(), shown.total_hours), "calibrated" if calibration else "default",
                 paths["md"].parent)
    return summary


def _log_calibration(calibration: Calibration, best_path: Path) -> None:
    audio = calibration.audio
    log.info("calibrated on %.2f h of validation audio the model did not train on (%.2f h keyword-free): "
             "thresholds for %g false alarms/h per keyword (95 %% bound), stored in %s: %s",
             calibration.hours, audio.get("negative_hours", 0.0), calibration.target_fa_per_hour, best_path.name,
             ", ".join(f"{k} {t:g} (bound {calibration.bounds[k]:.2f}/h)" for k, t in calibration.thresholds.items()))
    unmet = [k for k, ok in calibration.met.items() if not ok]
    if unmet:
        log.warning("the false-alarm target is not shown for %s: %.2f h of validation audio bound the rate by "
                    "%.2f/h at best; raise kws.negative_minutes", ", ".join(unmet), calibration.hours,
                    min(calibration.bounds.values()))


def calibration_summary(calibration: Calibration, labels: list[str]) -> dict:
    return {"thresholds": calibration.thresholds, "target_fa_per_hour": calibration.target_fa_per_hour,
            "met": calibration.met, "fa_per_hour_bound": calibration.to_dict()["fa_per_hour_bound"],
            "validation_minutes": calibration.audio.get("keyword_stream_hours", 0.0) * 60,
            "validation_hours": round(calibration.hours, 4), "validation_audio": calibration.audio,
            "validation": brief(calibration.validation, labels)}


def brief(score: Score, labels: list[str]) -> dict:
    """The totals of a score (its per-keyword detail goes to the report)."""
    full = score.to_dict(labels)
    return {key: full[key] for key in BRIEF}

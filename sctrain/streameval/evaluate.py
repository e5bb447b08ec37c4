"""One evaluation: the decoder's own thresholds, the DET curve and calibrated thresholds, on cached runs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sctrain.inference.events import EventDecoder
from sctrain.streameval.calibrate import TARGET_FA_PER_HOUR, Calibration, calibrate
from sctrain.streameval.scoring import TOLERANCE_S, Score
from sctrain.streameval.sweep import DEFAULT_GRID, DetPoint, Run, det_curve, sweep_scores


@dataclass
class Evaluation:
    labels: list[str]
    default_thresholds: dict[str, float]  # the decoder's own
    default: Score  # test runs, default thresholds
    det: list[DetPoint]  # test runs, one shared threshold per point
    calibration: Calibration | None = None  # chosen on the validation runs
    calibrated: Score | None = None  # test runs, calibrated thresholds
    tolerance_s: float = TOLERANCE_S

    def to_dict(self) -> dict:
        out = {"tolerance_s": self.tolerance_s, "default_thresholds": self.default_thresholds,
               "default": self.default.to_dict(self.labels), "det": [p.to_dict() for p in self.det]}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
            out["calibrated"] = self.calibrated.to_dict(self.labels)
        return out


def evaluate(decoder: EventDecoder, test_runs: Sequence[Run], validation_runs: Sequence[Run] = (),
             target_fa_per_hour: float = TARGET_FA_PER_HOUR, grid: Sequence[float] = DEFAULT_GRID,
             tolerance_s: float = TOLERANCE_S) -> Evaluation:
    """Score ``test_runs`` with the decoder's thresholds and along ``grid``; with ``validation_runs``, also
    with per-keyword thresholds calibrated on them for ``target_fa_per_hour``."""
    keywords = [lab for lab in decoder.labels if lab not in decoder.ignore]
    default_thresholds = {k: float(t) for k, t in zip(decoder.labels, decoder.thresholds) if k in keywords}
    default = sweep_scores(decoder, test_runs, [decoder.thresholds], tolerance_s)[0]
    result = Evaluation(decoder.labels, default_thresholds, default, det_curve(decoder, test_runs, grid, tolerance_s),
                        tolerance_s=tolerance_s)
    if validation_runs:
        result.calibration = calibrate(decoder, validation_runs, target_fa_per_hour, grid, tolerance_s)
        result.calibrated = sweep_scores(decoder, test_runs, [result.calibration.thresholds], tolerance_s)[0]
    return result

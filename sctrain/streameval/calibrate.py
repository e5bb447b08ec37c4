"""Per-keyword thresholds for a target false-alarm rate, chosen on validation streams.

Each keyword gets the lowest threshold of the grid from which on (at every higher grid value) its own
false alarms per hour stay at or under the target, when every keyword shares that threshold. Keywords
interact (a candidate follows the best qualifying score of any keyword), so the thresholds are then
checked together and a keyword still over the target moves up the grid until none is, or it reaches the
top (``met`` says which keywords made it). The target is per keyword: ``n`` keywords may together give
up to ``n`` times as many false alarms.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sctrain.inference.events import EventDecoder
from sctrain.streameval.det import DEFAULT_GRID, Run, sweep_scores
from sctrain.streameval.scoring import TOLERANCE_S, Score

TARGET_FA_PER_HOUR = 1.0


@dataclass
class Calibration:
    thresholds: dict[str, float]
    target_fa_per_hour: float
    met: dict[str, bool]
    validation: Score  # with these thresholds

    def to_dict(self) -> dict:
        return {"target_fa_per_hour": self.target_fa_per_hour, "thresholds": self.thresholds, "met": self.met,
                "validation": self.validation.to_dict(self.thresholds)}


def calibrate(decoder: EventDecoder, runs: Sequence[Run], target_fa_per_hour: float = TARGET_FA_PER_HOUR,
              grid: Sequence[float] = DEFAULT_GRID, tolerance_s: float = TOLERANCE_S) -> Calibration:
    if target_fa_per_hour < 0:
        raise ValueError(f"target_fa_per_hour must be >= 0, got {target_fa_per_hour}")
    grid = sorted(float(t) for t in grid)
    keywords = [lab for lab in decoder.labels if lab not in decoder.ignore]
    shared = sweep_scores(decoder, runs, grid, tolerance_s)
    level = {}
    for k in keywords:
        i = len(grid)
        while i > 0 and shared[i - 1].fa_per_hour(label=k) <= target_fa_per_hour:
            i -= 1
        level[k] = min(i, len(grid) - 1)
    while True:
        thresholds = {k: grid[level[k]] for k in keywords}
        score = sweep_scores(decoder, runs, [thresholds], tolerance_s)[0]
        over = [k for k in keywords if score.fa_per_hour(label=k) > target_fa_per_hour and level[k] < len(grid) - 1]
        if not over:
            break
        for k in over:
            level[k] += 1
    met = {k: score.fa_per_hour(label=k) <= target_fa_per_hour for k in keywords}
    return Calibration(thresholds, target_fa_per_hour, met, score)

"""Per-keyword thresholds for a target false-alarm rate, chosen on validation streams, failing safe.

A keyword's false alarms are judged by the 95 % upper bound of their rate (:mod:`sctrain.streameval.bounds`),
not by the count: a threshold qualifies when, at it and at every higher grid value, the bound of that keyword's
false alarms over all the negative hours stays at or under the target, with every keyword sharing the threshold.
Where several qualify, the highest one whose miss rate on the validation keywords is within ``miss_slack`` of
the best qualifying one is taken: a margin that costs no measured recall. That is also the rule for the plateau
where nothing fires at any threshold, which used to store the grid's floor: a model that heard its
calibration noise in training fires on none of it, and the floor then fired on every unseen noise.

When the hours are too few for any count to meet the bound (zero events in ``T`` hours bound the rate by about
``3 / T``), the threshold is chosen the same way from the thresholds at and above which nothing fires, and
``met`` is false: the claim is not supported, and the report says how many hours would be.

Keywords interact (a candidate follows the best qualifying score of any keyword), so the thresholds are then
checked together and a keyword still over moves up the grid until none is, or it reaches the top.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sctrain.artifacts.detector import StreamSettings
from sctrain.inference.events import EventDecoder
from sctrain.streameval.bounds import CONFIDENCE, hours_needed, rate_upper_bound
from sctrain.streameval.scoring import TOLERANCE_S, Score
from sctrain.streameval.sweep import DEFAULT_GRID, Run, sweep_scores

TARGET_FA_PER_HOUR = 1.0
MISS_SLACK = StreamSettings.miss_slack


@dataclass
class Calibration:
    thresholds: dict[str, float]
    target_fa_per_hour: float
    met: dict[str, bool]  # the bound of each keyword's false alarms is at or under the target
    validation: Score  # with these thresholds
    bounds: dict[str, float] = field(default_factory=dict)  # 95 % upper bound of each keyword's FA/h
    confidence: float = CONFIDENCE
    audio: dict = field(default_factory=dict)  # what the validation streams were made of (the pipeline fills it)

    @property
    def hours(self) -> float:
        return self.validation.total_hours

    def to_dict(self) -> dict:
        return {"target_fa_per_hour": self.target_fa_per_hour, "thresholds": self.thresholds, "met": self.met,
                "confidence": self.confidence, "fa_per_hour_bound": {k: round(b, 4) for k, b in self.bounds.items()},
                "hours": round(self.hours, 4), "hours_needed": round(hours_needed(self.target_fa_per_hour,
                                                                                 self.confidence), 4),
                "audio": self.audio, "validation": self.validation.to_dict(self.thresholds)}


def _bound(score: Score, keyword: str, confidence: float) -> float:
    return rate_upper_bound(score.fa_count(label=keyword), score.total_hours, confidence)


def _choose(scores: Sequence[Score], keyword: str, ok: Sequence[bool], miss_slack: float) -> int:
    """The grid index for ``keyword``: the lowest of the top run of ``ok`` levels, then up while the miss rate
    stays within ``miss_slack`` of that run's best."""
    start = len(ok)
    while start > 0 and ok[start - 1]:
        start -= 1
    if start == len(ok):
        return len(ok) - 1
    best = min(scores[i].miss_rate(keyword) for i in range(start, len(ok)))
    return max(i for i in range(start, len(ok)) if scores[i].miss_rate(keyword) <= best + miss_slack)


def calibrate(decoder: EventDecoder, runs: Sequence[Run], target_fa_per_hour: float = TARGET_FA_PER_HOUR,
              grid: Sequence[float] = DEFAULT_GRID, tolerance_s: float = TOLERANCE_S,
              miss_slack: float = MISS_SLACK, confidence: float = CONFIDENCE) -> Calibration:
    if target_fa_per_hour < 0:
        raise ValueError(f"target_fa_per_hour must be >= 0, got {target_fa_per_hour}")
    if not 0 <= miss_slack <= 1:
        raise ValueError(f"miss_slack must be in [0, 1], got {miss_slack}")
    grid = sorted(float(t) for t in grid)
    keywords = [lab for lab in decoder.labels if lab not in decoder.ignore]
    shared = sweep_scores(decoder, runs, grid, tolerance_s)
    # Too few hours for any count to meet the bound: fail safe on "nothing fired" instead.
    reachable = bool(shared) and rate_upper_bound(0, shared[0].total_hours, confidence) <= target_fa_per_hour

    def over(score: Score, keyword: str) -> bool:
        if reachable:
            return _bound(score, keyword, confidence) > target_fa_per_hour
        return score.fa_count(label=keyword) > 0

    level = {k: _choose(shared, k, [not over(s, k) for s in shared], miss_slack) for k in keywords}
    while True:
        thresholds = {k: grid[level[k]] for k in keywords}
        score = sweep_scores(decoder, runs, [thresholds], tolerance_s)[0]
        raised = [k for k in keywords if level[k] < len(grid) - 1 and over(score, k)]
        if not raised:
            break
        for k in raised:
            level[k] += 1
    bounds = {k: _bound(score, k, confidence) for k in keywords}
    met = {k: bounds[k] <= target_fa_per_hour for k in keywords}
    return Calibration(thresholds, target_fa_per_hour, met, score, bounds, confidence)

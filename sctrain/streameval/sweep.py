"""DET curve: miss rate against false alarms per hour as the threshold moves, from cached posteriors.

The model runs once per stream (:mod:`sctrain.streameval.posteriors`); each threshold only re-runs the
decoder's decisions. Event decoding is not a per-trial score, so the curve need not be monotone: a higher
threshold can skip an early, wrong candidate and so let the word's own event through. False alarms are
the scoring's (events near no keyword); an event with the wrong label counts against the miss rate only.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sctrain.inference.events import EventDecoder, Thresholds
from sctrain.streameval.mixed_stream import Stream
from sctrain.streameval.scoring import TOLERANCE_S, Score, score_events

# Finer towards 1: a confident model's posteriors bunch up there, and so do its false alarms.
DEFAULT_GRID = tuple(float(t) for t in np.round(np.r_[np.arange(0.05, 0.951, 0.05), 0.97, 0.98, 0.99, 0.995,
                                                      0.999, 1.0], 4))
Run = tuple[np.ndarray, Stream]  # a stream's cached posteriors [windows, labels] and the stream


@dataclass(frozen=True)
class DetPoint:
    threshold: float
    miss_rate: float
    fa_per_hour: float
    per_keyword: dict  # label -> (miss rate, false alarms per hour)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "miss_rate": round(self.miss_rate, 6),
                "fa_per_hour": round(self.fa_per_hour, 4),
                "per_keyword": {k: [round(m, 6), round(f, 4)] for k, (m, f) in self.per_keyword.items()}}


def sweep_scores(decoder: EventDecoder, runs: Sequence[Run], thresholds: Sequence[Thresholds],
                 tolerance_s: float = TOLERANCE_S) -> list[Score]:
    """The pooled :class:`Score` of ``runs`` under each of ``thresholds`` (scalars or per-keyword)."""
    events = [decoder.sweep(posteriors, thresholds) for posteriors, _ in runs]
    return [sum((score_events(per_run[k], stream, tolerance_s) for per_run, (_, stream) in zip(events, runs)),
                Score()) for k in range(len(thresholds))]


def det_curve(decoder: EventDecoder, runs: Sequence[Run], thresholds: Iterable[float] = DEFAULT_GRID,
              tolerance_s: float = TOLERANCE_S) -> list[DetPoint]:
    """One point per threshold (the same for every keyword), in threshold order."""
    thresholds = sorted(float(t) for t in thresholds)
    keywords = [lab for lab in decoder.labels if lab not in decoder.ignore]
    return [DetPoint(t, s.miss_rate(), s.fa_per_hour(), {k: (s.miss_rate(k), s.fa_per_hour(label=k)) for k in keywords})
            for t, s in zip(thresholds, sweep_scores(decoder, runs, thresholds, tolerance_s))]

"""From per-window posteriors to keyword events: smoothing, thresholds, filler gate, peak wait and refractory period.

:class:`EventDecoder` holds the decisions of :class:`sctrain.inference.streaming.StreamingDetector` without the
model, so that posteriors computed once for a stream can be decoded again under other settings: a DET
curve or a threshold calibration needs the events of one stream for dozens of thresholds, and the model
costs far more than the decisions. :meth:`EventDecoder.sweep` does that with the smoothing done once.

Thresholds may be one number for every keyword or one per keyword (a ``{label: threshold}`` dict or an
array over the labels). With one number the rules below reduce to the detector's original ones: a
smoothed keyword score only counts once it reaches its own keyword's threshold, and among the keywords
that reach theirs the highest score wins. The filler gate (``filler_gate``) adds one: a keyword only
counts while its smoothed score is above every filler's (``_silence_``, ``_unknown_``). Over a threshold of
0.5 or more that always holds, so the gate only changes the lower thresholds calibration often picks,
where it keeps windows the model itself calls silence or another word from opening an event.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from sctrain.artifacts.labels import FILLER_LABELS
from sctrain.audio.constants import SAMPLE_RATE

DEFAULT_THRESHOLD = 0.5
Thresholds = Union[float, Mapping[str, float], Sequence[float], np.ndarray]


@dataclass(frozen=True)
class Detection:
    """A keyword event: the word lies inside ``[start_s, start_s + 1 s]`` of the stream."""

    label: str
    start_s: float  # start of the 1 s window (centre of the smoothing span) where the score peaked
    score: float  # smoothed posterior at the peak

    def to_dict(self) -> dict:
        return {"label": self.label, "start_s": round(self.start_s, 3), "score": round(self.score, 4)}


def keyword_thresholds(labels: Sequence[str], threshold: Thresholds,
                       ignore: Iterable[str] = FILLER_LABELS) -> np.ndarray:
    """Thresholds as a float64 array over ``labels``, ``inf`` for the ignored labels (they never fire).

    A dict may leave keywords out (they keep :data:`DEFAULT_THRESHOLD`) but not name unknown labels: a
    misspelt keyword would otherwise be silently ignored.
    """
    ignored = set(ignore)
    if isinstance(threshold, Mapping):
        unknown = sorted(set(threshold) - set(labels))
        if unknown:
            raise ValueError(f"thresholds for unknown labels {unknown}; labels are {list(labels)}")
        values = np.array([threshold.get(lab, DEFAULT_THRESHOLD) for lab in labels], dtype=np.float64)
    else:
        given = np.asarray(threshold, dtype=np.float64)
        values = np.full(len(labels), float(given)) if given.ndim == 0 else given.copy()
        if values.shape != (len(labels),):
            raise ValueError(f"threshold must be a number or {len(labels)} values (one per label), "
                             f"got shape {values.shape}")
    keyword = np.array([lab not in ignored for lab in labels])
    bad = [(lab, v) for lab, v, k in zip(labels, values, keyword) if k and not 0.0 < v <= 1.0]
    if bad:
        label, value = bad[0]
        where = f" for {label!r}" if isinstance(threshold, Mapping) or np.ndim(threshold) else ""
        raise ValueError(f"threshold must be in (0, 1], got {value:g}{where}")
    values[~keyword] = np.inf
    return values


def threshold_dict(labels: Sequence[str], threshold: Thresholds,
                   ignore: Iterable[str] = FILLER_LABELS) -> dict[str, float]:
    """``{keyword: threshold}`` for every keyword of ``labels`` (the ignored labels left out)."""
    values = keyword_thresholds(labels, threshold, ignore)
    return {lab: float(v) for lab, v in zip(labels, values) if np.isfinite(v)}


class EventDecoder:
    """Feed one posterior vector per window with :meth:`step`, in stream order; it returns the events that
    window completes. :meth:`flush` ends the stream.

    The posteriors of the last ``smooth`` windows are averaged; a keyword whose average reaches its
    threshold opens a candidate event, which for ``peak_wait_s`` follows the highest qualifying score, of
    any keyword, and is then emitted (the windows centred on a word score higher than the first ones to
    hear part of it, which may take it for another word). No candidate opens for ``refractory_s`` after an
    event's peak. Windows are ``hop`` samples apart; ``start`` is a window's first stream sample.
    ``filler_gate``: see the module docstring. These defaults are the detector's first rules; the detector
    and the stream evaluation take theirs from :class:`sctrain.artifacts.detector.DetectorRules`.
    """

    def __init__(self, labels: Sequence[str], threshold: Thresholds = DEFAULT_THRESHOLD, smooth: int = 5,
                 hop: int = SAMPLE_RATE // 10, refractory_s: float = 1.0, peak_wait_s: float = 1.0,
                 ignore: Iterable[str] = FILLER_LABELS, sample_rate: int = SAMPLE_RATE,
                 filler_gate: bool = False) -> None:
        if smooth < 1:
            raise ValueError(f"smooth must be >= 1, got {smooth}")
        if refractory_s < 0 or peak_wait_s < 0:
            raise ValueError(f"refractory_ms and peak_wait_ms must be >= 0, got {refractory_s * 1000:g}, "
                             f"{peak_wait_s * 1000:g}")
        self.labels, self.ignore = list(labels), tuple(ignore)
        self.thresholds = keyword_thresholds(self.labels, threshold, self.ignore)
        self.smooth, self.hop, self.sample_rate = smooth, hop, sample_rate
        self.refractory_s, self.peak_wait_s = refractory_s, peak_wait_s
        self.filler_gate = filler_gate
        fillers = [i for i, lab in enumerate(self.labels) if lab in self.ignore]
        self._gate = fillers if filler_gate and fillers else None  # label indices a keyword must beat
        self.reset()

    def reset(self) -> None:
        self._history: collections.deque = collections.deque(maxlen=self.smooth)
        self._pending: list | None = None  # [label index, score, time, time opened]
        self._last_start: float | None = None
        self._next_start = 0  # where step() puts a window it is not told the start of

    # ------------------------------------------------------------------------------- one window
    def step(self, probs, start: int | None = None) -> list[Detection]:
        """``probs``: one window's posteriors over the labels (numpy or tensor); ``start``: its first stream
        sample (default: one hop after the previous window's, the first at 0)."""
        start = self._next_start if start is None else start
        self._next_start = start + self.hop
        smoothed, t = self._smooth(probs, start)
        best, score = _best(smoothed[None], self.thresholds, self._gate)
        return self._decide(int(best[0]), float(score[0]), t)

    def flush(self) -> list[Detection]:
        """End of stream: emit a candidate still waiting for its peak."""
        return [self._emit()] if self._pending is not None else []

    def _smooth(self, probs, start: int) -> tuple[np.ndarray, float]:
        # Averaged by torch, as the detector always did: numpy sums in another order, and a last-bit
        # difference at a threshold would be a different event.
        self._history.append(torch.as_tensor(probs, dtype=torch.float32))
        # The average describes the middle of the averaged windows.
        t = (start - (len(self._history) - 1) / 2 * self.hop) / self.sample_rate
        return torch.stack(tuple(self._history)).mean(0).numpy(), t

    def _decide(self, best: int, score: float, t: float) -> list[Detection]:
        """``best``: the keyword with the highest smoothed score among those at or over their threshold
        (-1: none is), ``score`` its score, ``t`` the time the smoothed scores describe."""
        events = []
        p = self._pending
        if p is not None:
            if best >= 0 and score > p[1]:  # a higher peak, of this label or another: the word now centred
                p[:3] = best, score, t
            if t - p[3] >= self.peak_wait_s:
                events.append(self._emit())
        if (self._pending is None and best >= 0
                and (self._last_start is None or t - self._last_start >= self.refractory_s)):
            self._pending = [best, score, t, t]
        return events

    def _emit(self) -> Detection:
        (label, score, start, _), self._pending = self._pending, None
        self._last_start = start
        return Detection(self.labels[label], max(0.0, start), score)

    # ------------------------------------------------------------------------------- whole streams
    def smoothed(self, posteriors) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed scores ``[N, labels]`` and their times of a stream's ``[N, labels]`` posteriors, window
        ``i`` starting at sample ``i * hop`` (as :class:`StreamingDetector` places them). Resets."""
        self.reset()
        rows = [self._smooth(p, i * self.hop) for i, p in enumerate(np.asarray(posteriors, dtype=np.float32))]
        self.reset()
        if not rows:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros(0)
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])

    def sweep(self, posteriors, thresholds: Iterable[Thresholds]) -> list[list[Detection]]:
        """The events of a whole stream under each of ``thresholds``; the smoothing is done once."""
        smoothed, times = self.smoothed(posteriors)
        return [self._replay(smoothed, times, keyword_thresholds(self.labels, th, self.ignore))
                for th in thresholds]

    def decode(self, posteriors, threshold: Thresholds | None = None) -> list[Detection]:
        """The events of a whole stream (flushed), under this decoder's thresholds or ``threshold``."""
        return self.sweep(posteriors, [self.thresholds if threshold is None else threshold])[0]

    def _replay(self, smoothed: np.ndarray, times: np.ndarray, thresholds: np.ndarray) -> list[Detection]:
        self.reset()
        best, score = _best(smoothed, thresholds, self._gate)
        events = []
        for b, s, t in zip(best.tolist(), score.tolist(), times.tolist()):
            if b >= 0 or self._pending is not None:  # otherwise this window changes nothing
                events += self._decide(b, s, t)
        events += self.flush()
        self.reset()
        return events


def _best(smoothed: np.ndarray, thresholds: np.ndarray, gate: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the highest-scoring label among those at or over their threshold and, with ``gate``, over
    the labels it lists (-1 if none), and its score."""
    eligible = smoothed >= thresholds
    if gate is not None:
        eligible &= smoothed > smoothed[:, gate].max(1, keepdims=True)
    masked = np.where(eligible, smoothed, -np.inf)
    best = masked.argmax(1)
    score = np.take_along_axis(smoothed, best[:, None], 1)[:, 0]
    return np.where(eligible.any(1), best, -1), score

"""Detections against a stream's truth, matched as TensorFlow's ``StreamingAccuracyStats`` matches them.

Each event, in time order, is matched to the first keyword of the truth (in time order) that lies within
``tolerance_s`` of it: a hit if the labels agree and that word was not matched before, a wrong label
otherwise (also for a second event on a word already matched, as the reference counts it); an event near
no keyword is a false alarm. A keyword no event matched is a miss. Two choices of ours: ``_unknown_``
words are never targets (the detector never names them), so an event on one is a false alarm "on
non-keyword speech"; and false alarms are counted per stretch of the stream (between keywords, noise
alone, non-keyword speech) and per hour of that stretch. The default tolerance is the 750 ms of the
reference's C++ tool, which, like this package, times an event by the window that scored it.
"""
from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sctrain.artifacts.labels import FILLER_LABELS
from sctrain.inference.events import Detection
from sctrain.streameval.bounds import rate_upper_bound
from sctrain.streameval.mixed_stream import SECTIONS, Stream

TOLERANCE_S = 0.75


@dataclass
class Score:
    """Counts of one stream (or several: ``a + b`` pools them). Per-label counters: ``truths``, ``hits``,
    ``wrong`` (keywords matched only by events of other labels) and ``misses`` by the word said;
    ``false_alarms`` by (stretch, label fired)."""

    truths: Counter = field(default_factory=Counter)
    hits: Counter = field(default_factory=Counter)
    wrong: Counter = field(default_factory=Counter)
    misses: Counter = field(default_factory=Counter)
    false_alarms: Counter = field(default_factory=Counter)
    wrong_events: int = 0  # the reference's "wrong" count: events matched to a word, not a hit
    hours: Counter = field(default_factory=Counter)  # per stretch kind
    outcomes: list = field(default_factory=list)  # (event, "hit" | "wrong" | "false_alarm:<stretch>")

    def __add__(self, other: Score) -> Score:
        return Score(self.truths + other.truths, self.hits + other.hits, self.wrong + other.wrong,
                     self.misses + other.misses, self.false_alarms + other.false_alarms,
                     self.wrong_events + other.wrong_events, self.hours + other.hours,
                     self.outcomes + other.outcomes)

    @property
    def total_hours(self) -> float:
        return sum(self.hours.values())

    def fa_count(self, section: str | None = None, label: str | None = None) -> int:
        return sum(n for (s, lab), n in self.false_alarms.items()
                   if section in (None, s) and label in (None, lab))

    def fa_per_hour(self, section: str | None = None, label: str | None = None) -> float:
        """False alarms per hour of ``section`` (all of the stream: None), of ``label`` or of all labels."""
        hours = self.total_hours if section is None else self.hours[section]
        count = self.fa_count(section, label)
        return count / hours if hours else (float("inf") if count else 0.0)

    def fa_bound(self, section: str | None = None, label: str | None = None) -> float:
        """The 95 % upper bound of :meth:`fa_per_hour` (:mod:`sctrain.streameval.bounds`)."""
        hours = self.total_hours if section is None else self.hours[section]
        return rate_upper_bound(self.fa_count(section, label), hours)

    def miss_rate(self, label: str | None = None) -> float:
        """Share of the keywords said (of ``label``, or all) that no event named right; 0 when none was said."""
        truths = sum(self.truths.values()) if label is None else self.truths[label]
        hits = sum(self.hits.values()) if label is None else self.hits[label]
        return 1.0 - hits / truths if truths else 0.0

    def to_dict(self, labels: Iterable[str] = ()) -> dict:
        """Totals (``wrong_labels`` counts events, as the reference) and, per keyword of ``labels`` or seen,
        words said, hits, words that got only wrong labels, misses and the keyword's false alarms."""
        keywords = sorted(set(labels) - set(FILLER_LABELS) | set(self.truths) | {lab for _, lab in self.false_alarms})
        return {
            "keywords_said": sum(self.truths.values()), "hits": sum(self.hits.values()),
            "wrong_labels": self.wrong_events, "misses": sum(self.misses.values()),
            "false_alarms": self.fa_count(), "hours": round(self.total_hours, 6),
            "miss_rate": round(self.miss_rate(), 6), "fa_per_hour": round(self.fa_per_hour(), 4),
            "fa_per_hour_bound": round(self.fa_bound(), 4),
            "hours_by_section": {s: round(self.hours[s], 6) for s in SECTIONS if self.hours[s]},
            "fa_per_hour_bound_by_section": {s: round(self.fa_bound(s), 4) for s in SECTIONS if self.hours[s]},
            "fa_per_hour_by_section": {s: round(self.fa_per_hour(s), 4) for s in SECTIONS if self.hours[s]},
            "per_keyword": {k: {"said": self.truths[k], "hits": self.hits[k], "wrong": self.wrong[k],
                                "misses": self.misses[k], "false_alarms": self.fa_count(label=k),
                                "miss_rate": round(self.miss_rate(k), 6),
                                "fa_per_hour": round(self.fa_per_hour(label=k), 4)} for k in keywords},
        }


def score_events(events: Sequence[Detection], stream: Stream, tolerance_s: float = TOLERANCE_S) -> Score:
    """Match ``events`` to ``stream.truth`` (see the module docstring)."""
    targets = sorted((w for w in stream.truth if w.label not in FILLER_LABELS), key=lambda w: w.start_s)
    times = [w.start_s for w in targets]
    matched: dict[int, bool] = {}  # target index -> hit by some event
    score = Score(truths=Counter(w.label for w in targets), hours=Counter(stream.hours()))
    for event in sorted(events, key=lambda e: e.start_s):
        j = bisect.bisect_left(times, event.start_s - tolerance_s)  # the first word not too early
        if j == len(times) or times[j] > event.start_s + tolerance_s:
            section = stream.section_at(event.start_s)
            score.false_alarms[(section, event.label)] += 1
            score.outcomes.append((event, f"false_alarm:{section}"))
        elif targets[j].label == event.label and j not in matched:
            matched[j] = True
            score.outcomes.append((event, "hit"))
        else:
            matched.setdefault(j, False)
            score.wrong_events += 1
            score.outcomes.append((event, "wrong"))
    for i, w in enumerate(targets):
        counter = {True: score.hits, False: score.wrong, None: score.misses}[matched.get(i)]
        counter[w.label] += 1
    return score

"""The detector's rules after the model (smoothing, refractory time, filler gate), as one value that travels
from the config to ``best_sc.pt``, exports and the detector.

The defaults are the rules that cut false alarms at equal misses on the DET curves of docs/streaming.md
(mini-set and generated streams). Longer smoothing keeps short posterior spikes from reaching a threshold. A
longer refractory time stops the tail of a word from firing a second time. The filler gate lets calibration
pick low thresholds without windows the model calls silence firing. Thresholds are calibrated under these
rules, so the two are stored together: thresholds chosen under other rules would not hold their
false-alarm rate.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Optional

from sctrain.audio.constants import SAMPLE_RATE

# A detector stream is float32 audio at 16 kHz, held whole while it is scored and replayed (validation and test).
STREAM_BYTES_PER_MINUTE = 4 * SAMPLE_RATE * 60


def hop_samples(hop_ms: float, name: str = "hop_ms") -> int:
    """The detector's window hop in samples; ``ValueError`` naming ``name`` unless it is one sample (1/16 ms at
    16 kHz) to one window (1000 ms). The CLI and :class:`~sctrain.inference.streaming.StreamingDetector` share it."""
    low = 1000 / SAMPLE_RATE
    if not (isinstance(hop_ms, (int, float)) and math.isfinite(hop_ms) and low <= hop_ms <= 1000):
        raise ValueError(f"{name} must be from {low:g} (one sample at {SAMPLE_RATE} Hz) to 1000 ms, got {hop_ms:g}")
    return int(round(hop_ms * SAMPLE_RATE / 1000))


def target_fa_problem(value: float) -> Optional[str]:
    """Why ``value`` cannot be a calibration target (false alarms per hour per keyword), or None. 0 is refused:
    zero false alarms in T hours only bound the rate by about 3/T, so no audio can show a target of 0. The CLI's
    ``--target-fa-per-hour`` and the config key ``kws.target_fa_per_hour`` share this check."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        return (f"must be a finite number > 0, got {value:g} (a rate of 0 cannot be shown: zero false alarms in "
                f"T hours bound it by about 3/T)")
    return None


def memory_bytes() -> Optional[int]:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def stream_size_problem(minutes: dict[str, float]) -> Optional[tuple[str, str]]:
    """``(name, why)`` when streams of these lengths (``{key or flag: minutes}``) would not fit in this machine's
    memory, ``name`` the longest; else None. Every stream is held whole while it is scored and replayed
    (:data:`STREAM_BYTES_PER_MINUTE`), beside the model and the posteriors, so more than half the memory is
    refused: checked before training or streaming starts, not met as a MemoryError after hours of work."""
    limit = memory_bytes()
    total = sum(minutes.values())
    if limit is None or total * STREAM_BYTES_PER_MINUTE <= limit / 2:
        return None
    name = max(minutes, key=lambda k: minutes[k])
    fit = limit / 2 / STREAM_BYTES_PER_MINUTE
    return name, (f"{minutes[name]:g} min is too long: the detector streams ({total:g} min in all) would hold "
                  f"{total * STREAM_BYTES_PER_MINUTE / 2 ** 30:.1f} GiB of audio, more than half of this machine's "
                  f"{limit / 2 ** 30:.1f} GiB of memory; keep them under {fit:.0f} min in all")


@dataclass(frozen=True)
class DetectorRules:
    smooth: int = 8  # windows averaged (100 ms apart by default) before thresholding
    refractory_ms: float = 1500.0  # no new candidate this long after an event's peak
    filler_gate: bool = True  # a keyword counts only while its smoothed score is above every filler's

    def __post_init__(self) -> None:
        if isinstance(self.smooth, bool) or not isinstance(self.smooth, int) or self.smooth < 1:
            raise ValueError(f"smooth must be an integer >= 1, got {self.smooth!r}")
        if isinstance(self.refractory_ms, bool) or not isinstance(self.refractory_ms, (int, float)) \
                or not 0 <= self.refractory_ms < math.inf:
            raise ValueError(f"refractory_ms must be a finite number >= 0, got {self.refractory_ms!r}")
        if not isinstance(self.filler_gate, bool):
            raise ValueError(f"filler_gate must be true or false, got {self.filler_gate!r}")

    def to_dict(self) -> dict:
        return {"smooth": self.smooth, "refractory_ms": float(self.refractory_ms), "filler_gate": self.filler_gate}

    @classmethod
    def from_dict(cls, stored: dict) -> DetectorRules:
        """From :meth:`to_dict`'s form; ``ValueError`` for unknown keys or bad values (missing keys keep
        their defaults)."""
        if not isinstance(stored, dict):
            raise ValueError(f"detector rules must be a mapping, got {type(stored).__name__}")
        unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown detector rules {unknown}")
        return cls(**stored)

    def decoder_kwargs(self) -> dict:
        """The :class:`sctrain.inference.events.EventDecoder` arguments these rules set."""
        return {"smooth": self.smooth, "refractory_s": self.refractory_ms / 1000.0, "filler_gate": self.filler_gate}


@dataclass(frozen=True)
class StreamSettings:
    """How a detector is calibrated and tested; stored in ``best_sc.pt`` beside the thresholds it chose."""

    validation_minutes: float = 30.0  # keyword stream of the validation split (calibration)
    negative_minutes: float = 180.0  # keyword-free validation audio: 3 h bound a 1 FA/h claim
    test_minutes: float = 10.0  # keyword stream of the test split (0: no test)
    test_negative_minutes: float = 60.0  # keyword-free test audio
    target_fa_per_hour: float = 1.0
    miss_slack: float = 0.02  # calibration takes margin while misses stay within this of the best
    seed: int = 0  # test streams; the validation streams use seed + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> StreamSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

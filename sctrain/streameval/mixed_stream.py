"""Long test streams with known words, built the way TensorFlow's ``generate_streaming_test_wav.py`` does.

Background: 1.5 s pieces of the noise recordings, one starting every second (so neighbours cross-fade
over 0.5 s, with 250 ms linear ramps), each from a random recording and offset at a random volume in
``[0, background_volume]``. Words: one per ``1 s + word_gap_s`` stride, shifted by a random part of the
gap (so ~3 s apart on average, at least 1 s), mixed in at full volume with 500-sample ramps; the truth is
each clip's label and start time. Beyond the reference, a stream may end with a stretch of noise alone
and a stretch of non-keyword words (``_unknown_``), so that false alarms can be told apart by what
caused them. Everything comes from one seeded generator: the same arguments give the same stream.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sctrain.artifacts.labels import UNKNOWN
from sctrain.audio.constants import SAMPLE_RATE

INT16_SCALE = 32768.0
CLIP_S = 1.0
WORD_RAMP = 500  # samples, as the reference
BACKGROUND_PIECE_S, BACKGROUND_STRIDE_S = 1.5, 1.0
SECTIONS = ("keywords", "noise", "unknown")  # what a stretch of the stream holds
# Share of a stream per stretch, when the split has non-keyword words and when it has none.
LAYOUT = {True: (0.6, 0.2, 0.2), False: (0.8, 0.2, 0.0)}


@dataclass(frozen=True)
class Word:
    label: str
    start_s: float  # where the clip begins in the stream


@dataclass
class Stream:
    wave: np.ndarray  # float32, mono, 16 kHz
    truth: list[Word]  # every word mixed in, keywords and _unknown_ ones, in time order
    sections: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, start_s, end_s)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.wave) / self.sample_rate

    def section_at(self, t: float) -> str:
        """The kind of stretch time ``t`` lies in (the last one for times past the end)."""
        for kind, start, end in self.sections:
            if start <= t < end:
                return kind
        return self.sections[-1][0] if t >= 0 else self.sections[0][0]

    def hours(self) -> dict[str, float]:
        out = dict.fromkeys(SECTIONS, 0.0)
        for kind, start, end in self.sections:
            out[kind] += (end - start) / 3600.0
        return out


def _as_float(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    return audio.astype(np.float32) / INT16_SCALE if audio.dtype == np.int16 else audio.astype(np.float32)


def _mix(track: np.ndarray, offset: int, sample: np.ndarray, volume: float, ramp_in: int, ramp_out: int,
         length: int) -> None:
    """Add ``sample[:length]`` into ``track`` at ``offset`` with linear ramps (the reference's envelope)."""
    n = min(length, len(sample), len(track) - offset)
    if n <= 0:
        return
    i = np.arange(n)
    envelope = np.ones(n, dtype=np.float32)
    if ramp_out:
        envelope = np.where(i > length - ramp_out, (length - i) / ramp_out, envelope)
    if ramp_in:  # the reference's order: the ramp in wins where the two would overlap
        envelope = np.where(i < ramp_in, i / ramp_in, envelope)
    track[offset: offset + n] += sample[:n] * envelope * volume


def _background(track: np.ndarray, noises: list[np.ndarray], volume: float, rng: np.random.Generator,
                rate: int) -> None:
    piece, stride = int(BACKGROUND_PIECE_S * rate), int(BACKGROUND_STRIDE_S * rate)
    ramp = (piece - stride) // 2
    for offset in range(0, len(track), stride):
        rec = noises[rng.integers(len(noises))]
        start = int(rng.integers(0, max(1, len(rec) - piece)))
        _mix(track, offset, rec[start:], rng.uniform(0, volume), ramp, ramp, piece)


def _words(track: np.ndarray, t0: int, t1: int, clips: list[tuple[np.ndarray, str]], by_label: bool,
           gap: int, rng: np.random.Generator, rate: int) -> list[Word]:
    """Words every ``1 s + gap`` between samples ``t0`` and ``t1``; ``by_label``: draw the label first (each
    keyword equally often, as the reference), else any clip."""
    clip_len = int(CLIP_S * rate)
    pools: dict[str, list] = {}
    for clip in clips:
        pools.setdefault(clip[1] if by_label else UNKNOWN, []).append(clip)
    labels = sorted(pools)
    truth = []
    for i in range((t1 - t0) // (clip_len + gap)):
        offset = t0 + i * (clip_len + gap) + int(rng.integers(gap)) if gap else t0 + i * clip_len
        pool = pools[labels[rng.integers(len(labels))]]
        audio, label = pool[rng.integers(len(pool))]
        # Converted here, not up front: a full test split is thousands of clips.
        _mix(track, offset, _as_float(audio), 1.0, WORD_RAMP, WORD_RAMP, clip_len)
        truth.append(Word(label, offset / rate))
    return truth


def build_stream(clips: Sequence[tuple[np.ndarray, str]], noises: Sequence[np.ndarray], keyword_s: float,
                 noise_s: float = 0.0, unknown: Sequence[tuple[np.ndarray, str]] = (), unknown_s: float = 0.0,
                 seed: int = 0, word_gap_s: float = 2.0, background_volume: float = 0.1,
                 sample_rate: int = SAMPLE_RATE) -> Stream:
    """A stream of ``keyword_s`` seconds of keywords, then ``noise_s`` of noise alone, then ``unknown_s`` of
    non-keyword words (labelled ``_unknown_`` in the truth, whatever their own label).

    ``clips`` / ``unknown``: ``(audio, label)`` pairs, int16 or float audio of about 1 s; ``noises``:
    background recordings (int16 or float). Noise underlies the whole stream (none if ``noises`` is empty).
    """
    if not clips:
        raise ValueError("no keyword clips to build a stream from")
    if unknown_s > 0 and not unknown:
        raise ValueError("unknown_s > 0 but no non-keyword clips given")
    rate = sample_rate
    gap = int(word_gap_s * rate)
    if keyword_s * rate < CLIP_S * rate + gap:
        raise ValueError(f"a {keyword_s:g} s keyword stretch holds no word: it needs {CLIP_S + word_gap_s:g} s")
    rng = np.random.default_rng(seed)
    lengths = [round(s * rate) for s in (keyword_s, noise_s, unknown_s)]
    bounds = np.cumsum([0, *lengths]).tolist()
    track = np.zeros(bounds[-1], dtype=np.float32)
    noise_list = [_as_float(n) for n in noises if len(n)]
    if noise_list:
        _background(track, noise_list, background_volume, rng, rate)
    truth = _words(track, bounds[0], bounds[1], list(clips), True, gap, rng, rate)
    if lengths[2]:
        truth += _words(track, bounds[2], bounds[3], [(a, UNKNOWN) for a, _ in unknown], False, gap, rng, rate)
    sections = [(kind, bounds[i] / rate, bounds[i + 1] / rate) for i, kind in enumerate(SECTIONS) if lengths[i]]
    return Stream(track, truth, sections, rate)

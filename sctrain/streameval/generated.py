"""Negative audio the model never trained on, generated: pieces of a split's stretch of the noise recordings at
gains down to -30 dB, coloured noise (white, pink, brown), babble of a split's clips played backwards (speech-like,
no word in it) and, when the split has them, non-keyword words. A few noise recordings alone cannot show a
false-alarm rate of one per hour: these give hours of varied sound from what a split already has."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sctrain.audio.constants import SAMPLE_RATE

PIECE_S = (2.0, 10.0)  # length of one kind of sound before the next
RAMP_S = 0.02  # cross-fade between pieces: no click for the detector to fire on
RECORDING_GAIN_DB = (-30.0, 0.0)
COLOURED_DBFS = (-55.0, -20.0)
BABBLE_DBFS = (-35.0, -15.0)
BABBLE_TALKERS = (3, 7)
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power falls as 1 / f^exponent


def _as_float(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    return audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    return x * (10 ** (dbfs / 20) / max(_rms(x), 1e-8))


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``n`` samples whose power spectrum falls as ``1 / f^exponent`` (unit RMS)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return (noise / max(_rms(noise), 1e-12)).astype(np.float32)


def babble(n: int, clips: Sequence[np.ndarray], reverse: bool, rng: np.random.Generator) -> np.ndarray:
    """Several talkers at once: clips laid end to end per talker at random offsets, summed."""
    out = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))):
        t = int(rng.integers(0, SAMPLE_RATE // 2))
        while t < n:
            clip = _as_float(clips[rng.integers(len(clips))])
            clip = clip[::-1] if reverse else clip
            m = min(len(clip), n - t)
            out[t: t + m] += clip[:m] * rng.uniform(0.5, 1.0)
            t += m + int(rng.integers(0, SAMPLE_RATE // 4))
    return out


def _piece(n: int, kind: str, recordings: Sequence[np.ndarray], keywords: Sequence[np.ndarray],
           unknown: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    if kind == "recording":
        rec = recordings[rng.integers(len(recordings))]
        start = int(rng.integers(0, max(1, len(rec) - n)))
        piece = np.resize(rec[start:start + n], n)  # a stretch shorter than the piece repeats
        return piece * np.float32(10 ** (rng.uniform(*RECORDING_GAIN_DB) / 20))
    if kind == "coloured":
        colour = list(COLOURS.values())[rng.integers(len(COLOURS))]
        return _at_dbfs(coloured_noise(n, colour, rng), rng.uniform(*COLOURED_DBFS))
    if kind == "babble":
        return _at_dbfs(babble(n, keywords, True, rng), rng.uniform(*BABBLE_DBFS))
    return _at_dbfs(babble(n, unknown, False, rng), rng.uniform(*BABBLE_DBFS))  # "unknown": other words


# The stream section each kind of piece is scored under: steady sound is "noise", talk without a keyword "unknown"
# (the report's "non-keyword speech").
SECTION_OF = {"recording": "noise", "coloured": "noise", "babble": "unknown", "unknown": "unknown"}


def negative_audio(seconds: float, recordings: Sequence[np.ndarray], keywords: Sequence[np.ndarray] = (),
                   unknown: Sequence[np.ndarray] = (), seed: int = 0) -> tuple[np.ndarray, list]:
    """``seconds`` of float32 16 kHz audio without a keyword, from one seeded generator, and its sections:
    ``(name, start_s, end_s)`` runs of "noise" (recordings, coloured noise) and "unknown" (babble, other words)."""
    rng = np.random.default_rng(seed)
    kinds = ["coloured"] + ["recording"] * bool(recordings) + ["babble"] * bool(keywords) + ["unknown"] * bool(unknown)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    ramp = int(RAMP_S * SAMPLE_RATE)
    sections: list = []
    t = 0
    while t < n:
        m = min(n - t, int(rng.uniform(*PIECE_S) * SAMPLE_RATE))
        kind = kinds[rng.integers(len(kinds))]
        piece = _piece(m + ramp, kind, recordings, keywords, unknown, rng)
        envelope = np.ones(len(piece), np.float32)
        envelope[:ramp] = np.linspace(0, 1, ramp, endpoint=False)
        envelope[-ramp:] = np.linspace(1, 0, ramp, endpoint=False)
        k = min(len(piece), n - t)
        out[t: t + k] += (piece * envelope)[:k]
        name, start, end = SECTION_OF[kind], t / SAMPLE_RATE, (t + m) / SAMPLE_RATE
        if sections and sections[-1][0] == name:
            sections[-1] = (name, sections[-1][1], end)
        else:
            sections.append((name, start, end))
        t += m
    return np.clip(out, -1.0, 1.0), sections

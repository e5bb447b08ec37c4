"""An engine's utterance as a dataset clip: 16 kHz mono, exactly 1 s, the loudest second, a varied level."""
from __future__ import annotations

import numpy as np

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import to_int16, to_model_rate

# Peak levels of the written clips, dBFS: real recordings range from quiet to near clipping, and the
# engines all normalise to full scale.
PEAK_DB = (-20.0, -1.0)


def loudest_second(audio: np.ndarray, samples: int = CLIP_SAMPLES) -> int:
    """The start of the ``samples``-long window of ``audio`` with the most energy (0 when it is shorter)."""
    if len(audio) <= samples:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(audio, dtype=np.float64) ** 2)])
    return int(np.argmax(energy[samples:] - energy[:-samples]))


def to_clip(audio: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """``audio`` at ``rate`` -> 1 s of 16 kHz int16 and what was done (the manifest's ``fit``).

    Longer speech keeps its loudest second; shorter speech lands at a random place in the second, so the
    word's onset varies as in real recordings. The peak is set to a random level in :data:`PEAK_DB`."""
    audio = to_model_rate(audio, rate, SAMPLE_RATE)
    length = len(audio)
    if length > CLIP_SAMPLES:
        start = loudest_second(audio)
        audio, offset = audio[start:start + CLIP_SAMPLES], -start
    else:
        offset = int(rng.integers(0, CLIP_SAMPLES - length + 1))
        audio = np.pad(audio, (offset, CLIP_SAMPLES - length - offset))
    peak = float(np.max(np.abs(audio)))
    peak_db = float(rng.uniform(*PEAK_DB))
    if peak > 0:
        audio = audio * (10 ** (peak_db / 20) / peak)
    return to_int16(audio), {"speech_s": round(length / SAMPLE_RATE, 3), "offset": offset,
                             "peak_db": round(peak_db, 2)}

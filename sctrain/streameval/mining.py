"""Hard negatives: the windows of keyword-free training audio on which a detector fires.

The detector (a checkpoint's thresholds and rules) listens to ``minutes`` of keyword-free audio made from the
training side only (:func:`sctrain.streameval.data.negative_streams` of the train split: the train stretch of
the noise recordings, generated noise, babble of training clips, training ``_unknown_`` words), and every event
it reports there is a false alarm by construction. The 1 s window it fired on is written as a WAV; a
fine-tuning run takes the folder as ``data.train_negatives`` (``_unknown_``, training split only), as
openWakeWord's verifier and microWakeWord's false-activation sets do. ``python -m sctrain.mine`` runs the rounds.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import to_int16
from sctrain.data.dataset import PackedDataset
from sctrain.inference.events import EventDecoder, Thresholds
from sctrain.inference.loading import LoadedModel
from sctrain.inference.streaming import model_rules, model_thresholds
from sctrain.streameval.data import negative_streams
from sctrain.streameval.posteriors import stream_posteriors


def mine(model: LoadedModel, data: PackedDataset, minutes: float, seed: int, out: Path,
         threshold: Thresholds | None = None, progress: bool = True) -> dict:
    """Write the windows ``model`` fires on in ``minutes`` of training-side negatives into ``out``; returns
    what was searched and found (hours, false alarms per keyword, files)."""
    decoder = EventDecoder(model.labels, model_thresholds(model) if threshold is None else threshold,
                           **model_rules(model).decoder_kwargs())
    out.mkdir(parents=True, exist_ok=True)
    found: Counter = Counter()
    seconds = 0.0
    for i, stream in enumerate(negative_streams(data, "train", minutes, seed)):
        posteriors = stream_posteriors(model.cpu_classifier, stream.wave, decoder.hop, progress=progress,
                                       desc=f"mining negatives {i + 1}")
        seconds += stream.duration_s
        for k, event in enumerate(decoder.decode(posteriors)):
            start = int(round(event.start_s * SAMPLE_RATE))
            window = np.zeros(CLIP_SAMPLES, np.float32)
            piece = stream.wave[start:start + CLIP_SAMPLES]
            window[:len(piece)] = piece
            sf.write(out / f"{event.label}_{seed}_{i}_{k}.wav", to_int16(window), SAMPLE_RATE, subtype="PCM_16")
            found[event.label] += 1
    hours = seconds / 3600
    return {"hours": round(hours, 4), "false_alarms": sum(found.values()), "by_keyword": dict(sorted(found.items())),
            "fa_per_hour": round(sum(found.values()) / hours, 2) if hours else None, "folder": str(out)}

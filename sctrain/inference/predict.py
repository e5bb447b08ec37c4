"""Predictions on files: any audio file in, top-k labels out.

Files of any sample rate and channel count are mixed down to mono and resampled to the model's 16 kHz;
files of any length are scored as 1 s windows (shorter ones zero-padded at the end, as the packed
training clips are), and a file's answer is its most confident window.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sctrain.artifacts.labels import FILLER_LABELS
from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import read_source, to_model_rate
from sctrain.inference.loading import LoadedModel

# Hop between the 1 s windows of a file longer than 1 s: a word (<= 1 s) lies wholly inside some window
# give or take 125 ms, about the time shift the model was trained to tolerate.
FILE_HOP = CLIP_SAMPLES // 4


def file_windows(wave: np.ndarray, size: int = CLIP_SAMPLES, hop: int = FILE_HOP) -> tuple[np.ndarray, np.ndarray]:
    """``[N, size]`` windows covering ``wave`` and their start samples; the last window ends at the end."""
    if len(wave) <= size:
        out = np.zeros((1, size), dtype=np.float32)
        out[0, : len(wave)] = wave
        return out, np.zeros(1, dtype=np.int64)
    starts = list(range(0, len(wave) - size + 1, hop))
    if starts[-1] != len(wave) - size:
        starts.append(len(wave) - size)
    starts_arr = np.asarray(starts, dtype=np.int64)
    return np.stack([wave[s: s + size] for s in starts_arr]), starts_arr


# --------------------------------------------------------------------------------------------- scoring

@torch.inference_mode()
def window_probs(classifier: torch.nn.Module, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` of ``[N, T]`` windows, in batches."""
    out = []
    for i in range(0, len(windows), batch_size):
        logits = classifier(torch.from_numpy(np.ascontiguousarray(windows[i: i + batch_size])))
        out.append(logits.float().softmax(-1).numpy())
    return np.concatenate(out)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(labels)))]
    return [{"label": labels[i], "prob": float(probs[i])} for i in order]


def best_window(probs: np.ndarray, labels: list[str]) -> int:
    """The most confident window, preferring those whose top label is a keyword rather than a filler."""
    top = probs.argmax(1)
    conf = probs.max(1)
    keyword = np.array([labels[t] not in FILLER_LABELS for t in top])
    return int(np.argmax(np.where(keyword, conf, conf - 2.0)))  # -2: any keyword window beats any filler one


def predict_wave(model: LoadedModel, wave: np.ndarray, k: int = 3) -> dict:
    """Top-k labels of a mono 16 kHz float waveform of any length (see the module docstring)."""
    windows, starts = file_windows(wave)
    probs = window_probs(model.cpu_classifier, windows)
    i = best_window(probs, model.labels)
    return {"duration_s": len(wave) / SAMPLE_RATE, "windows": len(windows),
            "window_start_s": float(starts[i] / SAMPLE_RATE), "top": top_k(probs[i], model.labels, k)}


def predict_file(model: LoadedModel, path: str | Path, k: int = 3) -> dict:
    data, rate = read_source(path)
    wave = to_model_rate(data, rate)
    return {"file": str(path), "sample_rate": rate, "channels": int(data.shape[1]), **predict_wave(model, wave, k)}

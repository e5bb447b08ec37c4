"""Room impulse responses: generated from a statistical room model, or loaded from recordings.

Generated responses follow the diffuse-field model (Polack): a direct path, then after the first
reflection's delay a tail of Gaussian noise whose envelope decays by 60 dB over the room's RT60, at a
drawn direct-to-reverberant ratio. No geometry, but the two properties a detector must learn to ignore,
smearing in time and a level of late energy, over the range of real rooms. Every response starts at its
direct path (sample 0), so reverberating a clip does not move the word in its window.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.io import AUDIO_SUFFIXES

MAX_RIR_S = 1.0  # longer tails are cut: at RT60 = 1 s the tail is 60 dB down by then
# Ranges of the generated rooms: first reflection 2-20 ms after the direct sound (rooms of a few metres),
# direct-to-reverberant ratio from -6 dB (far field) to +12 dB (close talk).
FIRST_REFLECTION_MS = (2.0, 20.0)
DRR_DB = (-6.0, 12.0)


def generated_rirs(count: int, rt60_min: float, rt60_max: float, seed: int,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[count, taps]`` float32 responses, RT60 uniform in [rt60_min, rt60_max] seconds; the same for the
    same arguments on every rank and every run (a private generator, not the training RNG)."""
    rng = np.random.default_rng(seed)
    taps = max(1, math.ceil(min(rt60_max, MAX_RIR_S) * sample_rate))
    t = np.arange(taps) / sample_rate
    out = np.zeros((count, taps), np.float32)
    for i in range(count):
        rt60 = rng.uniform(rt60_min, rt60_max)
        start = int(rng.uniform(*FIRST_REFLECTION_MS) * sample_rate / 1000)
        tail = rng.standard_normal(taps) * np.exp(-3 * math.log(10) * t / rt60)  # -60 dB at t = rt60
        tail[:start] = 0.0
        drr_db = rng.uniform(*DRR_DB)
        tail *= 1.0 / max(np.sqrt(np.sum(tail ** 2)), 1e-12) / 10 ** (drr_db / 20)
        tail[0] = 1.0  # the direct path, energy 1
        out[i] = tail
    return out


def load_rirs(folder: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Every recording under ``folder`` as ``[count, taps]`` float32: mixed down, at ``sample_rate``, cut
    to start at its direct path (the largest sample) and to at most ``MAX_RIR_S``, zero-padded to the
    longest. A folder without recordings is an error naming it."""
    from sctrain.audio.io import read_audio

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"augment.rir_dir: folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"augment.rir_dir: no {'/'.join(AUDIO_SUFFIXES)} recordings in {folder}")
    limit = int(MAX_RIR_S * sample_rate)
    rirs = []
    for path in files:
        h = read_audio(path, sample_rate)
        rirs.append(h[int(np.argmax(np.abs(h))):][:limit])
    out = np.zeros((len(rirs), max(len(h) for h in rirs)), np.float32)
    for i, h in enumerate(rirs):
        out[i, :len(h)] = h
    return out


def fft_convolve(wave: Tensor, rir: Tensor) -> Tensor:
    """Row ``b`` of ``wave [B, T]`` convolved with row ``b`` of ``rir [B, L]``, the first ``T`` samples
    (the tail past the clip's end is cut, as a window of a longer recording would)."""
    length = wave.shape[-1]
    n = 1 << (length + rir.shape[-1] - 2).bit_length()  # a power of two >= T + L - 1: no circular wrap
    spectrum = torch.fft.rfft(wave, n) * torch.fft.rfft(rir, n)
    return torch.fft.irfft(spectrum, n)[..., :length]

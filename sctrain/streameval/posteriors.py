"""The model's posteriors for every window of a stream, computed once and cached for all decodings.

Windows are placed as :class:`sctrain.inference.streaming.StreamingDetector` places them (window ``i`` covers
samples ``[i * hop, i * hop + 1 s)``), so decoding these posteriors with the detector's settings gives
the detector's events, up to float rounding between batched and one-window inference.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sctrain.audio.constants import CLIP_SAMPLES

PosteriorSource = Callable[[np.ndarray], np.ndarray]  # stream waveform -> [windows, labels] posteriors


def window_count(samples: int, hop: int, window: int = CLIP_SAMPLES) -> int:
    return 0 if samples < window else (samples - window) // hop + 1


@torch.inference_mode()
def stream_posteriors(classifier: torch.nn.Module, wave: np.ndarray, hop: int, batch_size: int = 128,
                      progress: bool = True, desc: str = "scoring windows") -> np.ndarray:
    """Softmax posteriors ``[windows, labels]`` of ``classifier`` (raw audio ``[B, 1 s]`` in, logits out)."""
    from tqdm.auto import tqdm

    wave = np.ascontiguousarray(wave, dtype=np.float32)
    n = window_count(len(wave), hop)
    # A strided view: only one batch of windows is ever copied out (a 10 min stream has 6,000 of 64 kB).
    windows = np.lib.stride_tricks.sliding_window_view(wave, CLIP_SAMPLES)[::hop][:n]
    out = []
    with tqdm(total=n, unit="window", desc=desc, disable=not progress, leave=False) as bar:
        for i in range(0, n, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(windows[i: i + batch_size]))
            out.append(classifier(batch).float().softmax(-1).numpy())
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

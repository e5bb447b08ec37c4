"""The device manifest's NumPy front end computes the features PyTorch's LogMel does, for the log-mel and the
MFCC front ends, on real clips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sctrain.audio.features import LogMel
from sctrain.config import load_config
from sctrain.inference.export import clip_batch, find_clips
from sctrain.inference.manifest import front_end, log_mel
from sctrain.models.registry import get_family


@pytest.mark.parametrize("family", ["kwsnet", "dscnn", "kwt"])  # 64 log-mels; 10 MFCC of 40 (1024-point FFT); 40 of 80
def test_numpy_front_end_equals_logmel(family, mini_root):
    cfg = load_config(None, [f"features.{k}={v}" for k, v in get_family(family).features.items()])
    logmel = LogMel(cfg.features).eval()
    manifest = {"front_end": front_end(logmel)}
    audio = clip_batch(find_clips([mini_root / "yes", mini_root / "stop"], 6))
    with torch.inference_mode():
        expected = logmel(torch.from_numpy(audio)).numpy()
    got = np.concatenate([log_mel(manifest, clip) for clip in audio])
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 2e-3

"""The device-side front end: int16 (or float) audio batches in, model-ready log-mel features out.

The trainer moves raw int16 batches to the device and calls this on each one, so the loader stays
trivial and the heavy per-sample work (augmentation, STFT) runs batched on the accelerator.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sctrain.audio.assets import AugmentAssets
from sctrain.audio.augment import WaveAugment
from sctrain.audio.constants import INT16_SCALE, SAMPLE_RATE
from sctrain.audio.features import LogMel, SpecMask
from sctrain.config import AugmentConfig, FeatureConfig


class FrontEnd(nn.Module):
    """``[B, T]`` int16 or float audio -> ``[B, 1, n_mels, frames]`` float32 features.

    ``assets``: the recordings the augmentation stages draw from (noise, impulse responses).
    Training mode: waveform augmentation, log-mel, spectrogram masking. Eval mode: log-mel only, so
    ``frontend.eval()`` gives exactly the features :class:`sctrain.models.classifier.AudioClassifier` computes.
    """

    def __init__(self, features: FeatureConfig, augment: AugmentConfig, assets: AugmentAssets,
                 sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.wave_augment = WaveAugment(augment, assets, sample_rate)
        self.logmel = LogMel(features, sample_rate)
        self.spec_mask = SpecMask(augment.mask_p, augment.freq_mask, augment.time_mask, augment.num_masks)

    def forward(self, audio: Tensor) -> Tensor:
        # Training: WaveAugment converts int16 in the same pass as its gain. Eval: a plain conversion.
        # Each part checks self.training itself, so frontend.eval() gives exactly the classifier's features.
        wave = self.wave_augment(audio) if self.wave_augment.training else to_float_audio(audio)
        return self.spec_mask(self.logmel(wave))


def to_float_audio(audio: Tensor) -> Tensor:
    """int16 samples -> float32 in [-1, 1); float audio -> float32 as it is."""
    return audio.float() / INT16_SCALE if audio.dtype == torch.int16 else audio.float()

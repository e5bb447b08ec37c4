"""Reverberation: a clip as if said in a room, convolved with one of ``assets.rirs``."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sctrain.audio.rir import fft_convolve
from sctrain.audio.stages import Stage, register_stage
from sctrain.audio.stages.noise import rms
from sctrain.config import AugmentConfig


class ReverbDraw(NamedTuple):
    rir: Tensor  # int64 [B]: row of assets.rirs
    on: Tensor  # bool [B]


@register_stage
class Reverb(Stage):
    """With ``reverb_p``, a clip convolved with a random impulse response, then scaled back to its RMS
    (the gain stage sets the level; the noise stage's SNR is then relative to the reverberant speech)."""

    name = "reverb"
    order = 30

    def __init__(self, cfg: AugmentConfig, assets, sample_rate: int) -> None:
        super().__init__()
        self.p = cfg.reverb_p
        self.assets = assets
        if assets.rirs.shape[0] == 0:
            raise ValueError("augment.reverb_p > 0 needs room impulse responses (AugmentAssets.rirs is empty)")

    @staticmethod
    def enabled(cfg: AugmentConfig) -> bool:
        return cfg.reverb_p > 0

    def draw(self, batch: int, length: int, device: torch.device, int16: bool) -> ReverbDraw:
        rir = torch.randint(0, self.assets.rirs.shape[0], (batch,), device=device)
        return ReverbDraw(rir, torch.rand(batch, device=device) < self.p)

    def apply(self, wave: Tensor, draw: ReverbDraw) -> Tensor:
        # Only the reverberated rows are convolved (an FFT of the clip plus the tail per row); finding
        # them waits for the device once per batch.
        rows = draw.on.nonzero().flatten()
        if rows.numel() == 0:
            return wave
        dry = wave[rows]
        wet = fft_convolve(dry, self.assets.rirs[draw.rir[rows]])
        wet = wet * (rms(dry) / rms(wet))[:, None]
        return wave.index_copy(0, rows, wet)

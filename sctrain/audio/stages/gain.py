"""Gain: one random level per clip, and the int16 -> float conversion in the same pass."""
from __future__ import annotations

import torch
from torch import Tensor

from sctrain.audio.constants import INT16_SCALE
from sctrain.audio.stages import Stage, register_stage
from sctrain.config import AugmentConfig


def uniform(low: float, high: float, batch: int, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(batch, device=device)


@register_stage
class Gain(Stage):
    """A gain of +-``gain_db`` per clip. Always in the chain (first): it turns int16 clips into float32,
    scaled to [-1, 1), so every later stage sees float waves; with ``gain_db = 0`` that is all it does."""

    name = "gain"
    order = 10

    def __init__(self, cfg: AugmentConfig, assets, sample_rate: int) -> None:
        super().__init__()
        self.gain_db = cfg.gain_db

    @staticmethod
    def enabled(cfg: AugmentConfig) -> bool:
        return True

    def draw(self, batch: int, length: int, device: torch.device, int16: bool) -> Tensor:
        """float32 ``[B]``: the linear gain, the int16 scaling included."""
        gain = torch.full((batch,), 1.0 / INT16_SCALE if int16 else 1.0, device=device)
        if self.gain_db > 0:
            gain = gain * torch.pow(10.0, uniform(-self.gain_db, self.gain_db, batch, device) / 20.0)
        return gain

    def apply(self, wave: Tensor, draw: Tensor) -> Tensor:
        return wave.float() * draw[:, None]

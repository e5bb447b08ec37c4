"""Time shift: where the word sits in its window, zero-filled (not circular)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sctrain.audio.stages import Stage, register_stage
from sctrain.audio.stages.gain import uniform
from sctrain.config import AugmentConfig


class ShiftDraw(NamedTuple):
    shift: Tensor  # int64 [B]: delay in samples (negative: advance); 0 for clips left in place
    max_shift: int  # bound on |shift|: sizes the zero padding


def time_shift(wave: Tensor, shift: Tensor, max_shift: int | None = None) -> Tensor:
    """Delay each row of ``wave [B, T]`` by ``shift [B]`` samples (negative = advance), zero-filled.

    Not ``torch.roll``: roll is circular and would wrap the end of the word onto its start, and it takes
    one shift for the whole batch. ``max_shift`` (a bound on ``|shift|``, in samples) only sizes the padding.
    """
    length = wave.shape[-1]
    pad = length if max_shift is None else min(int(max_shift), length)
    return shifted_windows(nn.functional.pad(wave, (pad, pad)), shift, pad, length)


def shifted_windows(padded: Tensor, shift: Tensor, pad: int, length: int) -> Tensor:
    """Rows of ``padded [B, pad + length + pad]`` (clips with ``pad`` zeros each side) delayed by ``shift``.

    Each row is a window picked from an ``unfold`` view: one copy of the audio, about 4x faster on a CPU
    than a gather over an int64 index grid.
    """
    start = pad - shift.clamp(-pad, pad)  # a shift of a whole clip or more leaves only padding anyway
    return padded.unfold(1, length, 1)[torch.arange(padded.shape[0], device=padded.device), start]


@register_stage
class Shift(Stage):
    """With ``shift_p``, a shift of up to +-``shift_max_ms``."""

    name = "shift"
    order = 20

    def __init__(self, cfg: AugmentConfig, assets, sample_rate: int) -> None:
        super().__init__()
        self.p, self.limit = cfg.shift_p, cfg.shift_max_ms * sample_rate / 1000.0

    @staticmethod
    def enabled(cfg: AugmentConfig) -> bool:
        return cfg.shift_p > 0 and cfg.shift_max_ms > 0

    def draw(self, batch: int, length: int, device: torch.device, int16: bool) -> ShiftDraw:
        shift = torch.round(uniform(-self.limit, self.limit, batch, device)).long()
        shift = shift * (torch.rand(batch, device=device) < self.p)
        return ShiftDraw(shift, min(math.ceil(self.limit), length))  # a whole clip or more leaves only silence

    def apply(self, wave: Tensor, draw: ShiftDraw) -> Tensor:
        return time_shift(wave, draw.shift, draw.max_shift)

"""Additive noise at a drawn SNR: a window of a background recording, or white noise."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from sctrain.audio.stages import Stage, register_stage
from sctrain.audio.stages.gain import uniform
from sctrain.config import AugmentConfig

# Floor of the RMS of a clip and of its noise: a silent clip gets (almost) no noise instead of NaN, and a
# silent background segment is not blown up to an infinite gain. Far below one int16 step (3e-5).
RMS_FLOOR = 1e-6
# Seconds of Gaussian noise that white-noise windows are cut from (drawn once per module, from the seeded
# global RNG): plenty of distinct windows, a few hundred kB.
WHITE_BANK_S = 8


def rms(wave: Tensor) -> Tensor:
    """Root mean square of each row of ``[B, T]``, floored at ``RMS_FLOOR`` (``vector_norm``: one pass,
    no squared copy)."""
    return (torch.linalg.vector_norm(wave, dim=-1) / math.sqrt(wave.shape[-1])).clamp_min(RMS_FLOOR)


def noise_level(noise_rms: Tensor, snr_db: Tensor) -> Tensor:
    """What the clip's RMS is divided by to scale noise of RMS ``noise_rms`` to ``snr_db`` below the clip."""
    return noise_rms.clamp_min(RMS_FLOOR) * torch.pow(10.0, snr_db / 20.0)


def add_noise(wave: Tensor, noise: Tensor, snr_db: Tensor, rows: Optional[Tensor] = None,
              noise_rms: Optional[Tensor] = None) -> Tensor:
    """``wave + noise`` with each noise row scaled so the clip-to-noise RMS ratio is ``snr_db [B]`` dB.

    ``rows`` (bool ``[B]``) limits the noise to those rows; the others come back unchanged. ``noise_rms``,
    when the caller knows it, saves a pass over the noise.
    """
    if noise_rms is None:
        noise_rms = rms(noise)
    scale = rms(wave) / noise_level(noise_rms, snr_db)
    if rows is not None:
        scale = scale * rows  # a zero scale, not torch.where: one pass over the audio instead of two
    return torch.addcmul(wave, noise, scale[:, None])


class NoiseDraw(NamedTuple):
    """Which noise each clip of a batch gets: a window of row ``row`` of :meth:`Noise.bank`."""

    row: Tensor  # int64 [B]
    offset: Tensor  # int64 [B]: first sample of the window in its row
    snr_db: Tensor  # float32 [B]
    on: Tensor  # bool [B]: whether the clip gets noise at all


@register_stage
class Noise(Stage):
    """With ``noise_p``, noise at an SNR uniform in [``snr_db_min``, ``snr_db_max``], from a random window
    of a background recording (``assets.noise``) with ``background_p`` (wrapping around the recording),
    else white noise: a random window of a bank of Gaussian noise drawn once (``WHITE_BANK_S`` seconds),
    which costs a copy instead of drawing ``B x T`` normal samples per batch, a sixth of the front end's
    time on a CPU."""

    name = "noise"
    order = 40

    def __init__(self, cfg: AugmentConfig, assets, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.assets = assets
        # One row: white windows wrap around WHITE_BANK_S seconds, and the bank (see bank) gains one row.
        self.register_buffer("white", torch.randn(1, WHITE_BANK_S * sample_rate), persistent=False)
        self._bank_cache: Optional[tuple[Tensor, Optional[Tensor]]] = None  # see bank; rebuilt after .to(device)

    @staticmethod
    def enabled(cfg: AugmentConfig) -> bool:
        return cfg.noise_p > 0

    def draw(self, batch: int, length: int, device: torch.device, int16: bool) -> NoiseDraw:
        snr_db = uniform(self.cfg.snr_db_min, self.cfg.snr_db_max, batch, device)
        row, offset = self._windows(batch, device)
        return NoiseDraw(row, offset, snr_db, torch.rand(batch, device=device) < self.cfg.noise_p)

    def apply(self, wave: Tensor, draw: NoiseDraw) -> Tensor:
        length = wave.shape[1]
        bank, _ = self.bank(length)
        noise = bank.unfold(1, length, 1)[draw.row, draw.offset]
        noise_rms = self.window_rms(draw, length)
        return add_noise(wave, noise, draw.snr_db, rows=draw.on,
                         noise_rms=rms(noise) if noise_rms is None else noise_rms)

    def kernel_args(self, draw: NoiseDraw, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """The C kernel's ``bank, noise_start, noise_mult`` for ``draw`` (see cpu_kernels.augment_wave)."""
        bank, _ = self.bank(length)
        noise_rms = self.window_rms(draw, length)  # never None on a CPU (float64 is there)
        start = draw.row * bank.shape[1] + draw.offset
        # add_noise's scale, rms(wave) / (noise RMS x 10^(SNR/20)), without the clip's RMS, which the
        # kernel measures after the shift; 0 for clips without noise.
        return bank, start, draw.on / noise_level(noise_rms, draw.snr_db)

    def _windows(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Row and offset in :meth:`bank` of each clip's noise window: a background recording with
        probability ``background_p``, else the white bank; a random offset inside the row's own period."""
        recordings, rec_len = self.assets.noise.shape
        white_rows, white_len = self.white.shape
        use_background = torch.rand(batch, device=device) < self.cfg.background_p
        if recordings == 0:
            use_background = torch.zeros_like(use_background)
        row = torch.where(use_background, torch.randint(0, max(1, recordings), (batch,), device=device),
                          recordings + torch.randint(0, white_rows, (batch,), device=device))
        period = torch.where(use_background, rec_len, white_len)
        offset = (torch.rand(batch, device=device) * period).long().clamp_max(period - 1)
        return row, offset

    def window_rms(self, draw: NoiseDraw, length: int) -> Optional[Tensor]:
        """RMS of each drawn noise window from the bank's energy table; None where there is none (MPS)."""
        _, energy = self.bank(length)
        if energy is None:
            return None
        window_energy = (energy[draw.row, draw.offset + length] - energy[draw.row, draw.offset]).clamp_min(0.0)
        return (window_energy / length).sqrt().float()

    def bank(self, length: int) -> tuple[Tensor, Optional[Tensor]]:
        """Background rows then white rows, each repeated to ``max period + length - 1`` samples, so a
        window of ``length`` from any offset inside its row's own period is contiguous: windows wrap
        around their recording, and clips longer than a recording still get noise throughout. With it,
        the running sum of squares of each row (float64, a leading 0: float32 would lose the window's share
        of a minute-long sum), so the energy of any window is a difference of two entries instead of a pass
        over the noise. Cached per length and device (about three times the recordings' memory).
        """
        sources = [src for src in (self.assets.noise, self.white) if src.shape[0] > 0]
        width = max(src.shape[1] for src in sources) + length - 1
        cached = self._bank_cache
        if cached is None or cached[0].shape[1] != width or cached[0].device != self.white.device:
            bank = torch.cat([src.repeat(1, math.ceil(width / src.shape[1]))[:, :width] for src in sources])
            energy = None
            if bank.device.type != "mps":  # no float64 there: the RMS is then computed from the windows
                energy = nn.functional.pad(bank.double().square().cumsum(dim=1), (1, 0))
            cached = self._bank_cache = (bank, energy)
        return cached

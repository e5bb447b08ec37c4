"""Waveform augmentation (gain, time shift, noise at a chosen SNR) and MixUp: batched, on the device.

Every clip of a batch draws its own parameters in one vectorised pass, from the global torch RNG of the
wave's device: the trainer seeds that RNG and stores it in checkpoints, so a resumed run augments the
same way; a private generator here would escape both.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sctrain.config import AugmentConfig

# Floor of the RMS of a clip and of its noise: a silent clip gets (almost) no noise instead of NaN, and a
# silent background segment is not blown up to an infinite gain. Far below one int16 step (3e-5).
_RMS_FLOOR = 1e-6


def _uniform(low: float, high: float, batch: int, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(batch, device=device)


def time_shift(wave: Tensor, shift: Tensor) -> Tensor:
    """Delay each row of ``wave [B, T]`` by ``shift [B]`` samples (negative = advance), zero-filled.

    A gather over an index grid rather than ``torch.roll``: roll is circular and would wrap the end of the
    word onto its start, and it takes one shift for the whole batch.
    """
    length = wave.shape[-1]
    src = torch.arange(length, device=wave.device) - shift[:, None]  # [B, T]: where each output sample comes from
    inside = (src >= 0) & (src < length)
    return torch.gather(wave, 1, src.clamp(0, length - 1)) * inside


def add_noise(wave: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """``wave + noise`` with each noise row scaled so the clip-to-noise RMS ratio is ``snr_db [B]`` dB."""
    rms_wave = wave.square().mean(dim=-1).sqrt().clamp_min(_RMS_FLOOR)
    rms_noise = noise.square().mean(dim=-1).sqrt().clamp_min(_RMS_FLOOR)
    scale = rms_wave / (rms_noise * torch.pow(10.0, snr_db / 20.0))
    return wave + noise * scale[:, None]


class WaveAugment(nn.Module):
    """Training-time waveform augmentation of ``[B, T]`` float clips in [-1, 1]; identity in eval mode.

    Per clip: a gain of +-``gain_db``; with ``shift_p`` a zero-filled shift of up to +-``shift_max_ms``;
    with ``noise_p`` noise at an SNR uniform in [``snr_db_min``, ``snr_db_max``], from a random window of
    a ``background`` recording with ``background_p`` (wrapping around the recording), else white noise.
    The output is not clipped back to [-1, 1]: the features are computed in float, nothing here is
    stored as int16 again.
    """

    def __init__(self, cfg: AugmentConfig, background: Tensor, sample_rate: int = 16000) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        if background.dim() != 2:
            raise ValueError(f"background must be [recordings, samples], got shape {tuple(background.shape)}")
        # Non-persistent: .to(device) moves it, but checkpoints stay free of a few MB of noise recordings.
        self.register_buffer("background", background.float().contiguous(), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        if not self.training:
            return wave
        cfg, batch, device = self.cfg, wave.shape[0], wave.device
        if cfg.gain_db > 0:
            gain_db = _uniform(-cfg.gain_db, cfg.gain_db, batch, device)
            wave = wave * torch.pow(10.0, gain_db / 20.0)[:, None]
        if cfg.shift_p > 0 and cfg.shift_max_ms > 0:
            max_shift = cfg.shift_max_ms * self.sample_rate / 1000.0
            shift = torch.round(_uniform(-max_shift, max_shift, batch, device)).long()
            shift = shift * (torch.rand(batch, device=device) < cfg.shift_p)
            wave = time_shift(wave, shift)
        if cfg.noise_p > 0:
            snr_db = _uniform(cfg.snr_db_min, cfg.snr_db_max, batch, device)
            noisy = add_noise(wave, self._noise(batch, wave.shape[-1], device).to(wave.dtype), snr_db)
            wave = torch.where((torch.rand(batch, device=device) < cfg.noise_p)[:, None], noisy, wave)
        return wave

    def _noise(self, batch: int, length: int, device: torch.device) -> Tensor:
        """``[B, length]`` noise rows: background windows with probability ``background_p``, else white."""
        white = torch.randn(batch, length, device=device)
        recordings, rec_len = self.background.shape
        if recordings == 0 or self.cfg.background_p == 0:
            return white
        row = torch.randint(0, recordings, (batch, 1), device=device)
        offset = torch.randint(0, rec_len, (batch, 1), device=device)
        # Modulo wraps the window around the recording, so every offset is usable and clips longer than
        # a recording still get noise throughout.
        flat = row * rec_len + (offset + torch.arange(length, device=device)) % rec_len
        segment = self.background.reshape(-1)[flat]
        use_background = torch.rand(batch, 1, device=device) < self.cfg.background_p
        return torch.where(use_background, segment, white)


def one_hot_targets(y: Tensor, num_classes: int) -> Tensor:
    """Float ``[B, C]`` targets from class indices ``[B]``; soft targets ``[B, C]`` pass through as float."""
    if y.dim() == 2:
        return y.float()
    return nn.functional.one_hot(y.long(), num_classes).float()


def mixup(x: Tensor, y: Tensor, num_classes: int, alpha: float) -> tuple[Tensor, Tensor]:
    """MixUp: ``lam * x + (1 - lam) * x[perm]`` with soft targets mixed alike; ``lam ~ Beta(alpha, alpha)``.

    One ``lam`` per batch (the usual MixUp), partners from a random permutation. ``x`` must be float
    (waves in [-1, 1] or features): mixing int16 samples would silently change their scale. ``lam``
    stays a device tensor, so this adds no host-device sync.
    """
    if not x.is_floating_point():
        raise TypeError(f"mixup needs float inputs, got {x.dtype}; convert int16 audio to float first")
    concentration = torch.tensor(float(alpha), device=x.device)
    # validate_args=False: the argument check reads a device tensor back to Python, a sync on a GPU.
    lam = torch.distributions.Beta(concentration, concentration, validate_args=False).sample()
    perm = torch.randperm(x.shape[0], device=x.device)
    targets = one_hot_targets(y, num_classes)
    mixed_x = lam.to(x.dtype) * x + (1 - lam.to(x.dtype)) * x[perm]
    mixed_y = lam * targets + (1 - lam) * targets[perm]
    return mixed_x, mixed_y

"""Log-mel features, per-clip normalisation and spectrogram masking: batched modules that run on the device.

The input side of the model: waveforms in, normalised ``[B, 1, n_mels, frames]`` spectrograms out. Both
modules are plain ``nn.Module``s with no parameters so they move with ``.to(device)``, run inside the
training step and export with the network (see :class:`sctrain.model.AudioClassifier`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchaudio.transforms import MelSpectrogram

from sctrain.config import FeatureConfig

# Added to the mel power before the log: -60 dB below a full-scale band, so digital silence gives a finite
# floor instead of -inf, and quiet clips keep their shape.
LOG_OFFSET = 1e-6
# Keeps the per-clip normalisation finite for constant (e.g. all-zero) clips.
NORM_EPS = 1e-5


def frames_for(cfg: FeatureConfig, num_samples: int = 16000) -> int:
    """Frames that :class:`LogMel` produces for ``num_samples`` samples (centred STFT: one per hop, plus one)."""
    return num_samples // cfg.hop_length + 1


class LogMel(nn.Module):
    """Waveform ``[B, T]`` (or one clip ``[T]``) -> per-clip normalised log-mel ``[B, 1, n_mels, frames]``.

    Always computed in float32: in fp16/bf16 the power spectrum under- and overflows and the log of the
    mel energies loses most of its resolution, so the module switches autocast off for itself.
    """

    def __init__(self, cfg: FeatureConfig, sample_rate: int = 16000) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.mel = MelSpectrogram(
            sample_rate=sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=True,
        )

    def forward(self, wave: Tensor) -> Tensor:
        # reshape, not a rank check, folds [T] and [B, T] into [B, T]: no Python branch for export to trace.
        wave = wave.reshape(-1, wave.shape[-1])
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.log(self.mel.mel_scale(self.power(wave.float())) + LOG_OFFSET)  # [B, n_mels, frames]
            # Per-clip normalisation: recording level and microphone colouring vary far more between
            # speakers than between words; the mean/variance over the whole clip carries no word identity.
            mean = spec.mean(dim=(-2, -1), keepdim=True)
            var = (spec - mean).square().mean(dim=(-2, -1), keepdim=True)
            spec = (spec - mean) * torch.rsqrt(var + NORM_EPS)
        return spec.unsqueeze(1)

    def power(self, wave: Tensor) -> Tensor:
        """``[B, T]`` float32 -> power spectrogram ``[B, n_fft // 2 + 1, frames]``, as ``self.mel.spectrogram``.

        The STFT of torchaudio's ``Spectrogram`` with its own window and settings, but the power as
        re^2 + im^2: torchaudio takes ``abs()`` (a square root) and squares it again, which makes its
        log-mel about 1.3x slower on a CPU.
        """
        s = self.mel.spectrogram
        stft = torch.stft(wave, s.n_fft, s.hop_length, s.win_length, s.window, center=s.center,
                          pad_mode=s.pad_mode, normalized=False, onesided=s.onesided, return_complex=True)
        return stft.real.square() + stft.imag.square()


def _band_mask(batch: int, count: int, size: int, max_width: int, device: torch.device) -> Tensor:
    """``[batch, size]`` bool: the union of ``count`` random bands per row, widths uniform in [0, max_width]."""
    max_width = min(max_width, size)
    width = torch.randint(0, max_width + 1, (batch, count, 1), device=device)
    # Start uniform over the positions where the whole band fits, so no band is clipped at the edge.
    start = (torch.rand(batch, count, 1, device=device) * (size - width + 1)).floor().long()
    pos = torch.arange(size, device=device)
    return ((pos >= start) & (pos < start + width)).any(dim=1)


class SpecMask(nn.Module):
    """SpecAugment on ``[B, C, F, T]`` features: each clip, with probability ``p``, gets ``num_masks``
    frequency bands and ``num_masks`` time spans set to 0, which after :class:`LogMel` is the clip mean.

    Masks are built for the whole batch at once from ``arange`` comparisons; identity in eval mode.
    """

    def __init__(self, p: float, freq_mask: int, time_mask: int, num_masks: int) -> None:
        super().__init__()
        self.p = p
        self.freq_mask = freq_mask
        self.time_mask = time_mask
        self.num_masks = num_masks

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p <= 0 or self.num_masks == 0:
            return x
        batch, n_freq, n_time = x.shape[0], x.shape[-2], x.shape[-1]
        freq = _band_mask(batch, self.num_masks, n_freq, self.freq_mask, x.device)  # [B, F]
        time = _band_mask(batch, self.num_masks, n_time, self.time_mask, x.device)  # [B, T]
        chosen = torch.rand(batch, device=x.device) < self.p
        mask = (freq[:, :, None] | time[:, None, :]) & chosen[:, None, None]  # [B, F, T]
        return x.masked_fill(mask.view(batch, *([1] * (x.dim() - 3)), n_freq, n_time), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, freq_mask={self.freq_mask}, time_mask={self.time_mask}, num_masks={self.num_masks}"

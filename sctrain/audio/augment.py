"""Waveform augmentation (gain, time shift, noise at a chosen SNR) and MixUp: batched, on the device.

Every clip of a batch draws its own parameters in one vectorised pass, from the global torch RNG of the
wave's device: the trainer seeds that RNG and stores it in checkpoints, so a resumed run augments the
same way; a private generator here would escape both.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from sctrain.audio import cpu_kernels
from sctrain.audio.constants import INT16_SCALE
from sctrain.config import AugmentConfig

# Floor of the RMS of a clip and of its noise: a silent clip gets (almost) no noise instead of NaN, and a
# silent background segment is not blown up to an infinite gain. Far below one int16 step (3e-5).
_RMS_FLOOR = 1e-6
# Seconds of Gaussian noise that white-noise windows are cut from (drawn once per module, from the seeded
# global RNG): plenty of distinct windows, a few hundred kB.
WHITE_BANK_S = 8


def _uniform(low: float, high: float, batch: int, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(batch, device=device)


def time_shift(wave: Tensor, shift: Tensor, max_shift: Optional[int] = None) -> Tensor:
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


def rms(wave: Tensor) -> Tensor:
    """Root mean square of each row of ``[B, T]``, floored at ``_RMS_FLOOR`` (``vector_norm``: one pass,
    no squared copy)."""
    return (torch.linalg.vector_norm(wave, dim=-1) / math.sqrt(wave.shape[-1])).clamp_min(_RMS_FLOOR)


def noise_level(noise_rms: Tensor, snr_db: Tensor) -> Tensor:
    """What the clip's RMS is divided by to scale noise of RMS ``noise_rms`` to ``snr_db`` below the clip."""
    return noise_rms.clamp_min(_RMS_FLOOR) * torch.pow(10.0, snr_db / 20.0)


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
    """Which noise each clip of a batch gets: a window of row ``row`` of :meth:`WaveAugment._bank`."""

    row: Tensor  # int64 [B]
    offset: Tensor  # int64 [B]: first sample of the window in its row
    snr_db: Tensor  # float32 [B]
    on: Tensor  # bool [B]: whether the clip gets noise at all


class WaveDraw(NamedTuple):
    """One batch's waveform augmentation, drawn per clip by :meth:`WaveAugment.draw`."""

    gain: Tensor  # float32 [B]: linear gain, int16 -> [-1, 1) scaling included
    shift: Optional[Tensor]  # int64 [B]: delay in samples (negative: advance); None: no shifting
    max_shift: int  # bound on |shift|: sizes the zero padding of the PyTorch path
    noise: Optional[NoiseDraw]  # None: no noise


class WaveAugment(nn.Module):
    """Training-time waveform augmentation of ``[B, T]`` clips; identity in eval mode.

    Input: float clips in [-1, 1], or int16 clips, converted in the same pass as the gain. Per clip: a gain
    of +-``gain_db``; with ``shift_p`` a zero-filled shift of up to +-``shift_max_ms``; with ``noise_p``
    noise at an SNR uniform in [``snr_db_min``, ``snr_db_max``], from a random window of a ``background``
    recording with ``background_p`` (wrapping around the recording), else white noise: a random window of
    a bank of Gaussian noise drawn once (``WHITE_BANK_S`` seconds), which costs a copy instead of drawing
    ``B x T`` normal samples per batch, a sixth of the front end's time on a CPU. The output is float32,
    not clipped back to [-1, 1]: the features are computed in float, nothing here is stored as int16 again.

    :meth:`draw` makes all random choices for a batch, then one of two implementations with the same result
    applies them: :meth:`apply` (PyTorch ops, on any device) or, on a CPU, the one-pass C kernel of
    :mod:`sctrain.audio.cpu_kernels` (3x faster there: 3.5 instead of 11 ms for 128 clips on one core).
    """

    def __init__(self, cfg: AugmentConfig, background: Tensor, sample_rate: int = 16000) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        if background.dim() != 2:
            raise ValueError(f"background must be [recordings, samples], got shape {tuple(background.shape)}")
        # Non-persistent: .to(device) moves it, but checkpoints stay free of a few MB of noise recordings.
        self.register_buffer("background", background.float().contiguous(), persistent=False)
        # One row: white windows wrap around WHITE_BANK_S seconds, and the bank (see _bank) gains one row.
        self.register_buffer("white", torch.randn(1, WHITE_BANK_S * sample_rate), persistent=False)
        self._bank_cache: Optional[tuple[Tensor, Optional[Tensor]]] = None  # see _bank; rebuilt after .to(device)

    def forward(self, wave: Tensor) -> Tensor:
        if not self.training:
            return wave
        draw = self.draw(wave.shape[0], wave.shape[1], wave.device, int16=wave.dtype == torch.int16)
        if cpu_kernels.usable(wave) and wave.dtype in (torch.int16, torch.float32):
            return self._apply_kernel(wave, draw)
        return self.apply(wave, draw)

    def draw(self, batch: int, length: int, device: torch.device, int16: bool = False) -> WaveDraw:
        """Every random choice for a batch of ``batch`` clips of ``length`` samples, from the global RNG."""
        cfg = self.cfg
        gain = torch.full((batch,), 1.0 / INT16_SCALE if int16 else 1.0, device=device)
        if cfg.gain_db > 0:
            gain = gain * torch.pow(10.0, _uniform(-cfg.gain_db, cfg.gain_db, batch, device) / 20.0)
        shift, max_shift = None, 0
        if cfg.shift_p > 0 and cfg.shift_max_ms > 0:
            limit = cfg.shift_max_ms * self.sample_rate / 1000.0
            shift = torch.round(_uniform(-limit, limit, batch, device)).long()
            shift = shift * (torch.rand(batch, device=device) < cfg.shift_p)
            max_shift = min(math.ceil(limit), length)  # a shift of a whole clip or more leaves only silence
        noise = None
        if cfg.noise_p > 0:
            snr_db = _uniform(cfg.snr_db_min, cfg.snr_db_max, batch, device)
            row, offset = self._noise_windows(batch, device)
            noise = NoiseDraw(row, offset, snr_db, torch.rand(batch, device=device) < cfg.noise_p)
        return WaveDraw(gain, shift, max_shift, noise)

    def apply(self, wave: Tensor, draw: WaveDraw) -> Tensor:
        """``draw`` applied to ``wave [B, T]`` with PyTorch ops (any device)."""
        batch, length = wave.shape
        if draw.shift is not None:
            # The windows are cut from a zero-padded copy in the input's own dtype (int16 moves half the
            # bytes of float32), then converted and scaled in place: a mixed-dtype multiply is slower on a CPU.
            pad = draw.max_shift
            padded = wave.new_empty(batch, length + 2 * pad)
            padded[:, :pad] = 0
            padded[:, pad + length:] = 0
            padded[:, pad:pad + length] = wave
            wave = shifted_windows(padded, draw.shift, pad, length).float().mul_(draw.gain[:, None])
        else:
            wave = wave.float() * draw.gain[:, None]
        if draw.noise is not None:
            bank, _ = self._bank(length)
            noise = bank.unfold(1, length, 1)[draw.noise.row, draw.noise.offset]
            noise_rms = self._window_rms(draw.noise, length)
            wave = add_noise(wave, noise, draw.noise.snr_db, rows=draw.noise.on,
                             noise_rms=rms(noise) if noise_rms is None else noise_rms)
        return wave

    def _apply_kernel(self, wave: Tensor, draw: WaveDraw) -> Tensor:
        """``draw`` applied by the C kernel: the same result as :meth:`apply` up to float rounding."""
        batch, length = wave.shape
        shift = draw.shift if draw.shift is not None else torch.zeros(batch, dtype=torch.int64)
        if draw.noise is None:
            bank, start, mult = self.white.new_empty(0), torch.zeros(batch, dtype=torch.int64), torch.zeros(batch)
        else:
            bank, _ = self._bank(length)
            noise_rms = self._window_rms(draw.noise, length)  # never None on a CPU (float64 is there)
            start = draw.noise.row * bank.shape[1] + draw.noise.offset
            # add_noise's scale, rms(wave) / (noise RMS x 10^(SNR/20)), without the clip's RMS, which the
            # kernel measures after the shift; 0 for clips without noise.
            mult = draw.noise.on / noise_level(noise_rms, draw.noise.snr_db)
        return cpu_kernels.augment_wave(wave, shift, draw.gain, bank, start, mult, _RMS_FLOOR)

    def _noise_windows(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Row and offset in :meth:`_bank` of each clip's noise window: a background recording with
        probability ``background_p``, else the white bank; a random offset inside the row's own period."""
        recordings, rec_len = self.background.shape
        white_rows, white_len = self.white.shape
        use_background = torch.rand(batch, device=device) < self.cfg.background_p
        if recordings == 0:
            use_background = torch.zeros_like(use_background)
        row = torch.where(use_background, torch.randint(0, max(1, recordings), (batch,), device=device),
                          recordings + torch.randint(0, white_rows, (batch,), device=device))
        period = torch.where(use_background, rec_len, white_len)
        offset = (torch.rand(batch, device=device) * period).long().clamp_max(period - 1)
        return row, offset

    def _window_rms(self, noise: NoiseDraw, length: int) -> Optional[Tensor]:
        """RMS of each drawn noise window from the bank's energy table; None where there is none (MPS)."""
        _, energy = self._bank(length)
        if energy is None:
            return None
        window_energy = (energy[noise.row, noise.offset + length] - energy[noise.row, noise.offset]).clamp_min(0.0)
        return (window_energy / length).sqrt().float()

    def _bank(self, length: int) -> tuple[Tensor, Optional[Tensor]]:
        """Background rows then white rows, each repeated to ``max period + length - 1`` samples, so a
        window of ``length`` from any offset inside its row's own period is contiguous: windows wrap
        around their recording, and clips longer than a recording still get noise throughout. With it,
        the running sum of squares of each row (float64, a leading 0: float32 would lose the window's share
        of a minute-long sum), so the energy of any window is a difference of two entries instead of a pass
        over the noise. Cached per length and device (about three times the recordings' memory).
        """
        sources = [src for src in (self.background, self.white) if src.shape[0] > 0]
        width = max(src.shape[1] for src in sources) + length - 1
        cached = self._bank_cache
        if cached is None or cached[0].shape[1] != width or cached[0].device != self.white.device:
            bank = torch.cat([src.repeat(1, math.ceil(width / src.shape[1]))[:, :width] for src in sources])
            energy = None
            if bank.device.type != "mps":  # no float64 there: the RMS is then computed from the windows
                energy = nn.functional.pad(bank.double().square().cumsum(dim=1), (1, 0))
            cached = self._bank_cache = (bank, energy)
        return cached


def one_hot_targets(y: Tensor, num_classes: int) -> Tensor:
    """Float ``[B, C]`` targets from class indices ``[B]``; soft targets ``[B, C]`` pass through as float."""
    if y.dim() == 2:
        return y.float()
    return nn.functional.one_hot(y.long(), num_classes).float()


def mixup(x: Tensor, y: Tensor, num_classes: int, alpha: float, p: float = 1.0) -> tuple[Tensor, Tensor]:
    """MixUp: ``lam * x + (1 - lam) * x[perm]`` with soft targets mixed alike; ``lam ~ Beta(alpha, alpha)``.

    One ``lam`` per batch (the usual MixUp), partners from a random permutation. ``x`` must be float
    (waves in [-1, 1] or features): mixing int16 samples would silently change their scale. With
    probability ``1 - p`` the batch is left as it is (``lam = 1``: exactly ``x`` and one-hot targets).
    The coin and ``lam`` stay device tensors, so this adds no host-device sync and no Python branch:
    a compiled or graph-captured step is the same graph for mixed and unmixed batches.
    """
    if not x.is_floating_point():
        raise TypeError(f"mixup needs float inputs, got {x.dtype}; convert int16 audio to float first")
    concentration = torch.tensor(float(alpha), device=x.device)
    # validate_args=False: the argument check reads a device tensor back to Python, a sync on a GPU.
    lam = torch.distributions.Beta(concentration, concentration, validate_args=False).sample()
    if p < 1.0:
        lam = torch.where(torch.rand((), device=x.device) < p, lam, torch.ones_like(lam))
    perm = torch.randperm(x.shape[0], device=x.device)
    targets = one_hot_targets(y, num_classes)
    mixed_x = lam.to(x.dtype) * x + (1 - lam.to(x.dtype)) * x[perm]
    mixed_y = lam * targets + (1 - lam) * targets[perm]
    return mixed_x, mixed_y

"""Log-mel features, per-clip normalisation and spectrogram masking: batched modules that run on the device.

The input side of the model: waveforms in, normalised ``[B, 1, n_mels, frames]`` spectrograms out. Both
modules are plain ``nn.Module``s with no parameters so they move with ``.to(device)``, run inside the
training step and export with the network (see :class:`sctrain.models.classifier.AudioClassifier`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchaudio.functional import create_dct
from torchaudio.transforms import MelSpectrogram

from sctrain.audio import cpu_kernels
from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE, frames_per_clip
from sctrain.config import FeatureConfig

# Added to the mel power before the log: -60 dB below a full-scale band, so digital silence gives a finite
# floor instead of -inf, and quiet clips keep their shape.
LOG_OFFSET = 1e-6
# Keeps the per-clip normalisation finite for constant (e.g. all-zero) clips.
NORM_EPS = 1e-5


def feature_shape(cfg: FeatureConfig) -> tuple[int, int]:
    """``(bands, frames)`` of the features :class:`LogMel` computes for one clip: what a network is built for."""
    return cfg.n_mfcc or cfg.n_mels, frame_count(cfg)


def frame_count(cfg: FeatureConfig, num_samples: int = CLIP_SAMPLES) -> int:
    """STFT frames of ``num_samples`` samples: one per hop plus one when centred (``features.center``), else
    the frames whose ``n_fft`` samples lie wholly inside."""
    if cfg.center:
        return frames_per_clip(cfg.hop_length, num_samples)
    return max(0, (num_samples - cfg.n_fft) // cfg.hop_length + 1)


def normalise_per_clip(spec: Tensor) -> Tensor:
    """Zero mean, unit variance over the last two axes (one clip's whole spectrogram, in either layout).

    Recording level and microphone colouring vary far more between speakers than between words; the
    mean/variance over the whole clip carries no word identity. Computed from the sums of x and x^2 (two
    fast reductions; var_mean's one-pass Welford is 8x slower on a CPU), as x * inv_std - mean * inv_std.
    Training, export and streaming all normalise here, so their features are the same numbers.
    """
    count = spec.shape[-1] * spec.shape[-2]
    mean = spec.sum(dim=(-2, -1), keepdim=True) / count
    var = (spec.square().sum(dim=(-2, -1), keepdim=True) / count - mean.square()).clamp_min(0.0)
    inv_std = torch.rsqrt(var + NORM_EPS)
    return torch.addcmul(-mean * inv_std, spec, inv_std)


class LogMel(nn.Module):
    """Waveform ``[B, T]`` (or one clip ``[T]``) -> per-clip normalised log-mel ``[B, 1, n_mels, frames]``
    (``features.normalise: none``: not normalised; ``features.center: false``: only the frames inside the clip).

    The numbers of torchaudio's ``MelSpectrogram`` (its window and filterbank, kept in ``self.mel``), computed
    faster: the spectrum stays frames-major (the layout ``torch.stft`` computes; torchaudio transposes it
    twice). On a CPU, the compiled kernel of :mod:`sctrain.audio.cpu_kernels` turns the spectrum into mel energies in
    one pass; elsewhere (GPU, autograd, export), or where it is not built, the power is one fused op
    (torchaudio takes ``abs()``, a square root, and squares it again) and the mel projection multiplies only
    the bands of the filterbank that are non-zero (:func:`mel_blocks`). Always computed in float32: in
    fp16/bf16 the power spectrum under- and overflows and the log of the mel energies loses most of its
    resolution, so the module switches autocast off.

    With ``cfg.n_mfcc > 0`` the bands are MFCCs instead: the orthonormal DCT-II of each frame's log-mel
    (torchaudio's ``MFCC`` with natural-log mels), one matrix product more, before the same normalisation.
    """

    def __init__(self, cfg: FeatureConfig, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.mel = MelSpectrogram(
            sample_rate=sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=True,
        )
        # Non-persistent: derived from the config, so checkpoints keep torchaudio's keys and nothing more.
        self.blocks = mel_blocks(self.mel.mel_scale.fb)
        for i, (lo, hi, m_lo, m_hi) in enumerate(self.blocks):
            self.register_buffer(f"fb_block{i}", self.mel.mel_scale.fb[lo:hi, m_lo:m_hi].contiguous(),
                                 persistent=False)
        # The CPU kernel's copy of the filterbank: plain tensors, not buffers, since it only ever runs on the CPU.
        self.sparse_fb = cpu_kernels.sparse_filterbank(self.mel.mel_scale.fb)
        dct = create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho") if cfg.n_mfcc else None  # [n_mels, n_mfcc]
        self.register_buffer("dct", dct, persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        # reshape, not a rank check, folds [T] and [B, T] into [B, T]: no Python branch for export to trace.
        wave = wave.reshape(-1, wave.shape[-1])
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = self.log_mel(wave.float(), self.cfg.center)  # [B, frames, n_mels]
            if self.cfg.normalise == "clip":
                spec = normalise_per_clip(spec)
        return spec.transpose(-1, -2).unsqueeze(1)

    def log_mel(self, wave: Tensor, center: bool = True) -> Tensor:
        """``[B, T]`` float32 -> un-normalised log-mel ``[B, frames, n_mels]`` (frames-major), or MFCCs
        ``[B, frames, n_mfcc]`` when the config asks for them."""
        spec = self.spectrum(wave, center)
        if cpu_kernels.usable(spec):  # the offset is added in the kernel's pass, the log in place
            log_mel = cpu_kernels.mel_energies(spec, self.sparse_fb, offset=LOG_OFFSET).log_()
        else:
            log_mel = torch.log(self.mel_energies(power_spectrum(spec)) + LOG_OFFSET)
        return log_mel if self.dct is None else log_mel @ self.dct

    def spectrum(self, wave: Tensor, center: bool = True) -> Tensor:
        """``[B, T]`` float32 -> complex STFT ``[B, frames, n_fft // 2 + 1]`` (frames-major).

        ``torch.stft``'s numbers with torchaudio's window and settings, the spectrum left frames-major;
        ``center=True`` frames the clip reflect-padded by ``n_fft // 2`` at each end (torchaudio's
        ``Spectrogram``), ``center=False`` takes only frames that lie wholly inside ``wave`` (streaming).
        """
        s = self.mel.spectrogram
        if center and not cpu_kernels.plain_eager(wave):  # autograd, tracing, export: the differentiable, traceable ops
            wave, center = reflect_pad(wave, s.n_fft // 2), False
        if not center:
            stft = torch.stft(wave, s.n_fft, s.hop_length, s.win_length, s.window, center=False,
                              normalized=False, onesided=s.onesided, return_complex=True)
            return stft.transpose(-1, -2)  # [B, bins, frames] is a view of a frames-major result
        # torch.stft's own numbers (window centred in the frame, then rfft), from frames cut straight from
        # the clip: no padded copy, and no reflection_pad1d (8x slower than a concatenation on a CPU).
        left = (s.n_fft - s.win_length) // 2
        window = nn.functional.pad(s.window, (left, s.n_fft - s.win_length - left))
        return torch.fft.rfft(centred_frames(wave, s.n_fft, s.hop_length, window))

    def power(self, wave: Tensor, center: bool = True) -> Tensor:
        """``[B, T]`` float32 -> power spectrogram ``[B, frames, n_fft // 2 + 1]`` (frames-major)."""
        return power_spectrum(self.spectrum(wave, center))

    def mel_energies(self, power: Tensor) -> Tensor:
        """``[..., bins]`` power -> ``[..., n_mels]``: ``power @ fb`` over the filterbank's non-zero blocks."""
        parts = [power[..., lo:hi] @ getattr(self, f"fb_block{i}") for i, (lo, hi, _, _) in enumerate(self.blocks)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def reflect_pad(wave: Tensor, half: int) -> Tensor:
    """``wave [B, T]`` reflect-padded by ``half`` samples at each end, as ``torch.stft(center=True)`` pads it,
    as one concatenation: its reflection_pad1d is 8x slower on a CPU."""
    return torch.cat([wave[:, 1:half + 1].flip(-1), wave, wave[:, -half - 1:-1].flip(-1)], dim=-1)


def centred_frames(wave: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Windowed frames ``[B, frames, n_fft]`` of ``wave [B, T]`` reflect-padded by ``n_fft // 2`` at each end.

    What ``torch.stft(center=True)`` frames, without a padded copy of the whole clip (on a CPU, one more
    pass over the audio than the frames need): the frames inside the clip are cut from it directly, and
    only the first and last few from short padded pieces.
    """
    batch, length = wave.shape
    half = n_fft // 2
    count = (length + 2 * half - n_fft) // hop + 1
    first = -(-half // hop)  # the first frame that starts inside the clip...
    last = (length + half - n_fft) // hop  # ...and the last that ends inside it
    if first > last:  # a clip of a few frames: pad it whole
        return reflect_pad(wave, half).unfold(-1, n_fft, hop) * window
    frames = wave.new_empty(batch, count, n_fft)
    inside = wave[:, first * hop - half:].unfold(-1, n_fft, hop)[:, :last - first + 1]
    torch.mul(inside, window, out=frames[:, first:last + 1])
    head = torch.cat([wave[:, 1:half + 1].flip(-1), wave[:, :(first - 1) * hop + n_fft - half]], dim=-1)
    torch.mul(head.unfold(-1, n_fft, hop), window, out=frames[:, :first])
    if last + 1 < count:
        tail = torch.cat([wave[:, (last + 1) * hop - half:], wave[:, -half - 1:-1].flip(-1)], dim=-1)
        torch.mul(tail.unfold(-1, n_fft, hop), window, out=frames[:, last + 1:])
    return frames


def power_spectrum(spec: Tensor) -> Tensor:
    """``|spec| ** 2`` of a complex tensor as one fused op (``abs()`` would take a square root to undo)."""
    parts = torch.view_as_real(spec)
    re, im = parts[..., 0], parts[..., 1]
    return torch.addcmul(re.square(), im, im)


def mel_blocks(fb: Tensor, bands_per_block: int = 16) -> list[tuple[int, int, int, int]]:
    """Cover a mel filterbank ``fb [bins, n_mels]`` with blocks ``(bin_lo, bin_hi, mel_lo, mel_hi)``.

    Triangular mel filters overlap only their neighbours, so each run of ``bands_per_block`` consecutive
    bands is non-zero on one short run of FFT bins; ``power @ fb`` equals the concatenation of the blocks'
    products. For the defaults (64 bands, 257 bins) the four blocks hold a quarter of the dense matrix.
    """
    n_mels = fb.shape[1]
    blocks = []
    for m_lo in range(0, n_mels, bands_per_block):
        m_hi = min(m_lo + bands_per_block, n_mels)
        rows = (fb[:, m_lo:m_hi] != 0).any(dim=1).nonzero().flatten().tolist()
        lo, hi = (rows[0], rows[-1] + 1) if rows else (0, 1)  # an all-zero block still gives zeros
        blocks.append((lo, hi, m_lo, m_hi))
    return blocks


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
    frequency bands and ``num_masks`` time spans set to 0, which after :class:`LogMel` is the clip mean
    (with ``features.normalise: none``, a log mel energy of 0, i.e. a mel power of about 1).

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
        chosen = (torch.rand(batch, device=x.device) < self.p)[:, None]
        # A float keep-mask (the outer product of the two) and one multiply: on a CPU, masked_fill with a
        # broadcast mask is 9x slower. The features are finite, so x * 0 is 0.
        keep = (~(freq & chosen)).float()[:, :, None] * (~(time & chosen)).float()[:, None, :]  # [B, F, T]
        return x * keep.view(batch, *([1] * (x.dim() - 3)), n_freq, n_time)

    def extra_repr(self) -> str:
        return f"p={self.p}, freq_mask={self.freq_mask}, time_mask={self.time_mask}, num_masks={self.num_masks}"

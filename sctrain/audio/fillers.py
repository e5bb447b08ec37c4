"""Filler clips made on the device from each training batch: time-reversed speech as ``_unknown_`` and
generated noise as ``_silence_``.

A detector's false alarms come from sound the filler classes never showed it. A layout's own negatives are few
(a folder of other words, four noise recordings), so the fillers are widened here, per batch, before the
waveform stages: what these make still gets gain, shift, reverberation and noise.

- ``augment.reversed_unknown_p``: that share of the ``_unknown_`` rows is replaced by a keyword clip of the same
  batch played backwards, and half of those by two reversed clips over each other (two talkers). Reversed speech
  has speech's spectrum, loudness and rhythm but no word in it: the model has to tell a keyword by its order in
  time, not by its sounds, which is what other speech tests. A keyword whose reverse sounds like another keyword
  ("no" and "on") is taught against that keyword: leave this at 0 for such a vocabulary.
- ``augment.spliced_unknown_p``: that share of the ``_unknown_`` rows is replaced by the start of one keyword
  clip and the end of another keyword's, joined inside both words (at the same share, 30-70 %, of each word's
  extent, found from its energy) with a 10 ms cross-fade: a word made of keyword sounds that is no keyword
  ("n" + "own"), the near misses real other words are ("nine", "wow"), so the model must hear the whole word.
- ``augment.generated_silence_p``: that share of the ``_silence_`` rows is replaced by coloured noise (power
  falling as ``1 / f^e``, ``e`` uniform from 0, white, to 2, brown) at a level uniform in
  ``[generated_silence_dbfs_min, generated_silence_dbfs_max]`` dBFS: steady noises the recordings do not have.

Both draw from the global torch RNG of the batch's device, like the stages (:mod:`sctrain.audio.stages`), and
leave every other row as it was.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from sctrain.artifacts.labels import FILLER_LABELS, SILENCE, UNKNOWN
from sctrain.audio.constants import INT16_SCALE
from sctrain.config import AugmentConfig

# The coloured bank: rows of noise drawn once at construction (from the seeded global RNG), exponents evenly
# spread over [0, 2]; a clip takes a random window of a random row, as the white-noise bank of the noise stage.
COLOURED_ROWS = 16
COLOURED_BANK_S = 4
SECOND_TALKER_P = 0.5  # share of reversed rows that get a second reversed clip over them
SECOND_TALKER_GAIN = (0.3, 1.0)  # its level relative to the first
SPLICE_AT = (0.3, 0.7)  # where in each word's extent the two are joined
SPLICE_FADE_S = 0.01  # cross-fade length: no click at the join for the model to learn instead
WORD_EXTENT = (0.1, 0.9)  # a word spans the clip from 10 % to 90 % of its energy
ENERGY_FRAME_S = 0.01  # frames the energy envelope is measured in


def coloured_bank(rows: int, samples: int, exponents: Optional[Tensor] = None) -> Tensor:
    """``[rows, samples]`` Gaussian noise, row ``i``'s power spectrum falling as ``1 / f^exponents[i]``, each row
    at unit RMS (default exponents: ``rows`` values evenly spread over [0, 2]). The streams' coloured noise
    (:func:`sctrain.streameval.generated.coloured_noise`) is numpy from a stream's own seed on purpose: evaluation
    audio does not depend on the training RNG."""
    if exponents is None:
        exponents = torch.linspace(0.0, 2.0, rows)
    spectrum = torch.fft.rfft(torch.randn(rows, samples, dtype=torch.float64), dim=-1)
    f = torch.fft.rfftfreq(samples, dtype=torch.float64)
    f[0] = f[1]  # no infinite DC gain: the lowest bin is held at the first one's level
    noise = torch.fft.irfft(spectrum / f[None, :] ** (exponents.double()[:, None] / 2), n=samples, dim=-1)
    return (noise / noise.square().mean(-1, keepdim=True).sqrt()).float()


def word_extent(wave: Tensor, frame: int) -> tuple[Tensor, Tensor]:
    """First and last sample ``[B]`` (float) of the span holding ``WORD_EXTENT`` of each row's energy, measured in
    frames of ``frame`` samples (a silent row spans the whole clip)."""
    batch, length = wave.shape
    frames = length // frame
    energy = wave[:, : frames * frame].reshape(batch, frames, frame).square().sum(-1)
    cumulative = energy.cumsum(-1) / energy.sum(-1, keepdim=True).clamp_min(1e-12)
    first = (cumulative < WORD_EXTENT[0]).sum(-1).float() * frame
    last = ((cumulative < WORD_EXTENT[1]).sum(-1).float() + 1) * frame
    return first, last.clamp_max(length - 1)


class FillerSynthesis(nn.Module):
    """``(audio [B, T] int16 or float, target [B] class indices) -> (float32 audio, target)``; identity in
    eval mode. ``labels``: the dataset's labels (what ``target`` indexes)."""

    def __init__(self, cfg: AugmentConfig, labels: Sequence[str], sample_rate: int = 16000) -> None:
        super().__init__()
        self.cfg = cfg
        self.unknown = labels.index(UNKNOWN) if UNKNOWN in labels else -1
        self.silence = labels.index(SILENCE) if SILENCE in labels else -1
        self.register_buffer("is_keyword", torch.tensor([lab not in FILLER_LABELS for lab in labels]),
                             persistent=False)
        self.frame, self.fade = round(ENERGY_FRAME_S * sample_rate), round(SPLICE_FADE_S * sample_rate)
        rows = COLOURED_ROWS if self.silence >= 0 and cfg.generated_silence_p > 0 else 0
        self.register_buffer("bank", coloured_bank(rows, COLOURED_BANK_S * sample_rate) if rows else
                             torch.zeros(0, 1), persistent=False)

    @staticmethod
    def enabled(cfg: AugmentConfig) -> bool:
        return cfg.reversed_unknown_p > 0 or cfg.spliced_unknown_p > 0 or cfg.generated_silence_p > 0

    def active(self) -> bool:
        """Whether anything can change: the config asks for it and the labels have the class it makes."""
        return ((self.cfg.reversed_unknown_p + self.cfg.spliced_unknown_p > 0 and self.unknown >= 0)
                or (self.cfg.generated_silence_p > 0 and self.silence >= 0))

    def forward(self, audio: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training or not self.active() or target.dim() != 1:
            return audio, target
        wave = audio.float() / INT16_SCALE if audio.dtype == torch.int16 else audio.float()
        if self.cfg.reversed_unknown_p + self.cfg.spliced_unknown_p > 0 and self.unknown >= 0:
            # One draw per row picks what an _unknown_ row becomes: reversed, spliced or left as it is.
            kind = torch.rand(wave.shape[0], device=wave.device)
            unknown = target == self.unknown
            if self.cfg.reversed_unknown_p > 0:
                wave = self._reversed(wave, target, unknown & (kind < self.cfg.reversed_unknown_p))
            if self.cfg.spliced_unknown_p > 0:
                rows = unknown & (kind >= self.cfg.reversed_unknown_p) & (
                    kind < self.cfg.reversed_unknown_p + self.cfg.spliced_unknown_p)
                wave = self._spliced(wave, target, rows)
        if self.cfg.generated_silence_p > 0 and self.silence >= 0:
            wave = self._coloured(wave, target)
        return wave, target

    def _reversed(self, wave: Tensor, target: Tensor, rows: Tensor) -> Tensor:
        batch, device = wave.shape[0], wave.device
        first, second = torch.randperm(batch, device=device), torch.randperm(batch, device=device)
        rows = rows & self.is_keyword[target[first]]
        low, high = SECOND_TALKER_GAIN
        gain = (low + (high - low) * torch.rand(batch, device=device)) * (
            (torch.rand(batch, device=device) < SECOND_TALKER_P) & self.is_keyword[target[second]])
        reversed_speech = wave[first].flip(-1) + gain[:, None] * wave[second].flip(-1)
        return torch.where(rows[:, None], reversed_speech, wave)

    def _spliced(self, wave: Tensor, target: Tensor, rows: Tensor) -> Tensor:
        batch, length = wave.shape
        device = wave.device
        head, tail = torch.randperm(batch, device=device), torch.randperm(batch, device=device)
        rows = (rows & self.is_keyword[target[head]] & self.is_keyword[target[tail]]
                & (target[head] != target[tail]))
        start, end = word_extent(wave, self.frame)
        share = SPLICE_AT[0] + (SPLICE_AT[1] - SPLICE_AT[0]) * torch.rand(batch, device=device)
        cut_head = (start[head] + share * (end[head] - start[head])).long()
        cut_tail = (start[tail] + share * (end[tail] - start[tail])).long()
        # Sample n of the splice: the head clip's own sample n before the cut, the tail clip's sample
        # n - cut_head + cut_tail after it (zero outside the clip), blended over the fade.
        n = torch.arange(length, device=device)[None, :]
        source = n - cut_head[:, None] + cut_tail[:, None]
        inside = (source >= 0) & (source < length)
        tail_part = torch.gather(wave[tail], 1, source.clamp(0, length - 1)) * inside
        fade = ((n - cut_head[:, None]).float() / self.fade + 0.5).clamp(0.0, 1.0)
        spliced = wave[head] * (1.0 - fade) + tail_part * fade
        return torch.where(rows[:, None], spliced, wave)

    def _coloured(self, wave: Tensor, target: Tensor) -> Tensor:
        batch, length = wave.shape
        device = wave.device
        rows = (target == self.silence) & (torch.rand(batch, device=device) < self.cfg.generated_silence_p)
        row = torch.randint(0, self.bank.shape[0], (batch,), device=device)
        offset = torch.randint(0, max(1, self.bank.shape[1] - length + 1), (batch,), device=device)
        index = (offset[:, None] + torch.arange(length, device=device)[None, :]).clamp_max(self.bank.shape[1] - 1)
        low, high = self.cfg.generated_silence_dbfs_min, self.cfg.generated_silence_dbfs_max
        level = torch.pow(10.0, (low + (high - low) * torch.rand(batch, device=device)) / 20.0)
        noise = self.bank[row[:, None], index] * level[:, None]
        return torch.where(rows[:, None], noise, wave)

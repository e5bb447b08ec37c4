"""Keyword spotting on a live or long stream: successive audio chunks in, detection events out.

Every ``hop`` (default 100 ms) the model scores the latest 1 s of audio; the posteriors of the last
``smooth`` windows are averaged, and a keyword whose smoothed posterior crosses ``threshold`` (and, with
the filler gate, is above the _silence_ and _unknown_ posteriors) opens a candidate event. For
``peak_wait_ms`` (default 1 s) the candidate follows the highest smoothed keyword score, of any keyword,
and is then emitted: a word that is only partly inside the window can look like another word (the first
windows to hear it cross the threshold early, often with the wrong label), while the windows centred on
it score higher. No new candidate opens for ``refractory_ms`` after an event's peak, so one spoken word,
which stays inside the sliding 1 s window for most of a second, gives one event. The price is latency:
with 5-window smoothing an event was reported about 1.8 s after its clip began (median on the test
stream; 1.1-3 s); the default 8 windows put the centre of the average 150 ms further back. ``start_s``
is the start of the window that scored best. The defaults of ``smooth``, ``refractory_ms`` and the gate
are :class:`sctrain.artifacts.detector.DetectorRules`, chosen on DET curves (docs/streaming.md).

Stateful models (``stateful=``, :mod:`sctrain.inference.stateful`): a model exported with ``--streaming``
keeps the buffers of its features and layers between calls, so each hop computes only the frames it adds; it
needs a checkpoint trained with ``features.center: false``, ``features.normalise: none`` and
``model.<family>.time_padding: valid``, and fixes the hop (kwsnet: a multiple of 160 ms).

Features: by default each window's log-mel is computed whole (:class:`sctrain.audio.features.LogMel`).
``incremental=True`` uses :class:`IncrementalLogMel` instead, which keeps the STFT frames that lie wholly
inside the window from one hop to the next and computes only the new ones and the few edge frames, with
the same numbers. Measured (``python -m sctrain.bench latency``): it does not pay with the default front
end: one STFT over a 1 s window costs a fraction of a millisecond, under a tenth of the CNN's time per
window, and the three smaller STFT calls the incremental path needs cost more in per-call overhead than
the frames they save. It would pay with a costlier front end (longer FFTs, smaller hops).

The decisions (smoothing, thresholds, filler gate, peak wait, refractory period) are those of
:class:`sctrain.inference.events.EventDecoder`, which replays them over cached posteriors; ``threshold``
may also be one value per keyword. By default the thresholds are the checkpoint's own, calibrated after
training for a target false-alarm rate (:attr:`LoadedModel.thresholds`), or 0.5 for a checkpoint without,
and the rules are the ones they were calibrated under (:func:`model_rules`). An argument given wins.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from sctrain.artifacts.detector import DetectorRules, hop_samples
from sctrain.artifacts.labels import FILLER_LABELS
from sctrain.audio.constants import CLIP_SAMPLES, INT16_SCALE, SAMPLE_RATE
from sctrain.audio.features import LogMel, normalise_per_clip
from sctrain.inference.events import DEFAULT_THRESHOLD, Detection, EventDecoder, Thresholds
from sctrain.inference.loading import LoadedModel
from sctrain.inference.stateful import StatefulRunner

log = logging.getLogger(__name__)

DEFAULT_HOP_MS = 100.0


class IncrementalLogMel:
    """Per-window log-mel of a sliding 1 s window whose start advances by whole STFT hops.

    Frame ``j`` of a window starting at sample ``s`` is centred on ``s + j * hop_length``. Frames whose
    ``n_fft`` span lies inside the window do not depend on where the window starts, so the ones the
    previous window already had are reused and only the frames the hop added are computed; the edge
    frames (2 at each end for the defaults) see reflect padding and are computed per window.
    """

    def __init__(self, logmel: LogMel, window: int = CLIP_SAMPLES) -> None:
        self.logmel = logmel
        spec = logmel.mel.spectrogram
        self.n_fft, self.hop, self.window = spec.n_fft, spec.hop_length, window
        self.frames = window // self.hop + 1
        half = self.n_fft // 2
        self.first_inner = -(-half // self.hop)  # ceil: first frame whose span starts inside the window
        self.last_inner = (window - half) // self.hop  # last frame whose span ends inside the window
        # Edge frames come from a short centred STFT on the window's first / last samples; a whole number
        # of hops long, so the tail segment's frames fall on the window's own frame grid.
        self.edge_len = self.hop * (self.first_inner + 2 + -(-half // self.hop))
        self.reset()

    def reset(self) -> None:
        self._inner: Optional[Tensor] = None  # log-mel of the inner frames of the last window [n_mels, n]
        self._start = 0  # that window's first stream sample

    def _log_mel(self, seg: Tensor, center: bool) -> Tensor:
        return self.logmel.log_mel(seg[None], center)[0].T  # [n_mels, frames]

    def __call__(self, wave: Tensor, start: int) -> Tensor:
        """``wave``: the window's samples (float32 ``[window]``), ``start``: its first stream sample (a
        multiple of the STFT hop). Returns normalised ``[1, 1, n_mels, frames]`` features."""
        lo, hi, half = self.first_inner, self.last_inner, self.n_fft // 2
        shift = (start - self._start) // self.hop
        keep = hi - lo + 1 - shift if self._inner is not None and 0 <= shift else 0
        if keep > 0:  # the window moved by `shift` frames: reuse the columns it still covers
            new = hi - shift + 1  # first inner frame (window-relative) not computed before
            seg = wave[new * self.hop - half: hi * self.hop + half]
            inner = torch.cat([self._inner[:, shift:], self._log_mel(seg, center=False)], dim=1)
        else:
            inner = self._log_mel(wave[lo * self.hop - half: hi * self.hop + half], center=False)
        self._inner, self._start = inner, start
        head = self._log_mel(wave[: self.edge_len], center=True)[:, :lo]
        tail = self._log_mel(wave[-self.edge_len:], center=True)[:, -(self.frames - 1 - hi):]
        return normalise_per_clip(torch.cat([head, inner, tail], dim=1))[None, None]


def stateful_runner(stateful: Optional[StatefulRunner | str | Path], labels: list[str]) -> Optional[StatefulRunner]:
    """``stateful`` as a runner: a path is loaded (a ``--streaming`` ONNX file), a runner taken as it is; its
    labels must be the model's."""
    if stateful is None:
        return None
    if isinstance(stateful, (str, Path)):
        from sctrain.inference.stateful_export import OnnxStateful

        stateful = OnnxStateful(stateful)
    if list(stateful.labels) != labels:
        raise ValueError(f"the stateful model's labels {list(stateful.labels)} are not the checkpoint's {labels}")
    return stateful


def model_thresholds(model: LoadedModel) -> Thresholds:
    """The thresholds a detector uses unless told others: the checkpoint's calibrated ones, else 0.5."""
    return dict(model.thresholds) if model.thresholds else DEFAULT_THRESHOLD


def model_rules(model: LoadedModel) -> DetectorRules:
    """The rules a detector uses unless told others: those stored with the checkpoint's thresholds, else
    its training config's (``kws.smooth``, ``kws.refractory_ms``, ``kws.filler_gate``)."""
    return model.rules if model.rules is not None else model.config.kws.rules()


class StreamingDetector:
    """Feed successive mono 16 kHz chunks (float in [-1, 1] or int16) with :meth:`feed`; it returns the
    :class:`Detection` events completed by that chunk. :meth:`flush` ends the stream.

    ``threshold``: one value, or one per keyword; None = :func:`model_thresholds` (the checkpoint's calibrated
    ones, else 0.5). ``smooth``, ``refractory_ms``, ``filler_gate``: None = :func:`model_rules`. ``net``: any
    callable from ``[1, 1, n_mels, frames]`` features to ``[1, labels]`` logits (default ``model.cpu_net``:
    BatchNorm folded, channels-last); ``incremental``: see the module docstring. ``hop_ms``: None = 100 ms.

    ``stateful``: a stateful streaming model (a ``--streaming`` ONNX file's path, or a
    :class:`~sctrain.inference.stateful.StatefulRunner`) instead of recomputing each window: it is called once
    per hop, from the stream's first sample, on the new hop only; its hop is the detector's (a ``hop_ms`` that
    differs is an error), and from the first full second on its logits are the windowed model's, so the
    events are the same (:mod:`sctrain.inference.stateful`).
    """

    def __init__(self, model: LoadedModel, hop_ms: Optional[float] = None, threshold: Optional[Thresholds] = None,
                 smooth: Optional[int] = None, refractory_ms: Optional[float] = None,
                 peak_wait_ms: float = 1000.0, incremental: bool = False, ignore: Iterable[str] = FILLER_LABELS,
                 net: Optional[Callable[[Tensor], Tensor]] = None, filler_gate: Optional[bool] = None,
                 stateful: Optional[StatefulRunner | str | Path] = None) -> None:
        self.labels = list(model.labels)
        self._stateful = stateful_runner(stateful, self.labels)
        if self._stateful is not None:
            if hop_ms is not None and hop_samples(hop_ms) != self._stateful.hop:
                raise ValueError(f"hop_ms {hop_ms:g}: the stateful model runs every "
                                 f"{self._stateful.hop * 1000 / SAMPLE_RATE:g} ms (its hop is fixed at export)")
            self.hop = self._stateful.hop
        else:
            self.hop = hop_samples(DEFAULT_HOP_MS if hop_ms is None else hop_ms)
        if threshold is None:
            threshold = model_thresholds(model)
        given = {"smooth": smooth, "refractory_ms": refractory_ms, "filler_gate": filler_gate}
        # Validates smooth, refractory_ms and filler_gate; the decoder checks threshold and peak_wait_ms.
        self.rules = dataclasses.replace(model_rules(model), **{k: v for k, v in given.items() if v is not None})
        self.decoder = EventDecoder(self.labels, threshold, hop=self.hop, peak_wait_s=peak_wait_ms / 1000.0,
                                    ignore=ignore, **self.rules.decoder_kwargs())
        self.threshold, self.smooth = threshold, self.rules.smooth
        self.refractory_s, self.peak_wait_s = self.rules.refractory_ms / 1000.0, peak_wait_ms / 1000.0
        self.net = net if net is not None else model.cpu_net
        self.logmel = model.features
        stft_hop = self.logmel.mel.spectrogram.hop_length
        # IncrementalLogMel reproduces the default front end: centred frames, per-clip normalisation.
        default_front = self.logmel.cfg.center and self.logmel.cfg.normalise == "clip"
        self.incremental = (incremental and self.hop % stft_hop == 0 and CLIP_SAMPLES % stft_hop == 0
                            and default_front and self._stateful is None)
        if incremental and not self.incremental:
            log.info("hop %d or the window is not a multiple of the STFT hop %d, the front end is not centred and "
                     "normalised per clip, or the model is stateful: features computed per window", self.hop, stft_hop)
        self._features = IncrementalLogMel(self.logmel) if self.incremental else None
        self.reset()

    def reset(self) -> None:
        # Ring buffer written twice (at i and i + W), so the latest W samples are always one contiguous view.
        self._ring = np.zeros(2 * CLIP_SAMPLES, dtype=np.float32)
        self._seen = 0  # samples received
        self.decoder.reset()
        self.windows = 0
        self.compute_s = 0.0
        if self._features is not None:
            self._features.reset()
        if self._stateful is not None:
            self._stateful.reset()

    # ------------------------------------------------------------------------------------ input
    def feed(self, chunk: np.ndarray) -> list[Detection]:
        t0 = time.perf_counter()
        chunk = np.asarray(chunk)
        if chunk.ndim == 2:
            chunk = chunk.mean(axis=1)
        if chunk.dtype == np.int16:
            chunk = chunk.astype(np.float32) / INT16_SCALE
        else:
            chunk = chunk.astype(np.float32, copy=False)
            # A NaN would poison every window it stays in (a second of posteriors) without a word.
            if not np.isfinite(chunk).all():
                raise ValueError(f"feed: the chunk holds NaN or infinite samples (after {self.audio_s:.3f} s of "
                                 f"audio); pass finite samples in [-1, 1]")
        events: list[Detection] = []
        pos = 0
        while pos < len(chunk):
            # Write up to the next window boundary, then score the window that ends there.
            due = self._next_window_end() - self._seen
            take = min(len(chunk) - pos, due)
            self._write(chunk[pos: pos + take])
            pos += take
            if take == due:
                events += self._score_window()
        self.compute_s += time.perf_counter() - t0
        return events

    def flush(self) -> list[Detection]:
        """End of stream: emit a candidate still waiting for its peak."""
        return self.decoder.flush()

    def process(self, wave: np.ndarray, chunk: int = 1600) -> list[Detection]:
        """A whole recording, fed in ``chunk``-sample pieces as a microphone callback would."""
        return self.process_blocks([wave], chunk)

    def process_blocks(self, blocks: Iterable[np.ndarray], chunk: int = 1600) -> list[Detection]:
        """A recording given as successive blocks (:func:`sctrain.audio.io.read_audio_blocks`: hours of audio in
        the memory of one block), fed in ``chunk``-sample pieces; the events do not depend on where the blocks
        or chunks end (a window is scored when its last sample arrives)."""
        events = []
        for wave in blocks:
            for i in range(0, len(wave), chunk):
                events += self.feed(wave[i: i + chunk])
        return events + self.flush()

    @property
    def audio_s(self) -> float:
        return self._seen / SAMPLE_RATE

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio time (below 1: faster than real time)."""
        return self.compute_s / max(1e-9, self.audio_s)

    def _next_window_end(self) -> int:
        if self._stateful is not None:  # every call, from the first: the lead-in zeros start the first one
            return self._seen + self.hop - (self._seen + self._stateful.lead_in) % self.hop
        if self._seen < CLIP_SAMPLES:
            return CLIP_SAMPLES
        return self._seen + self.hop - (self._seen - CLIP_SAMPLES) % self.hop

    def _write(self, samples: np.ndarray) -> None:
        n, w = len(samples), CLIP_SAMPLES  # n <= w: feed never writes past the next window end
        i = self._seen % w
        first = min(n, w - i)
        for offset in (0, w):
            self._ring[offset + i: offset + i + first] = samples[:first]
            self._ring[offset: offset + n - first] = samples[first:]
        self._seen += n

    def _window(self) -> np.ndarray:
        i = self._seen % CLIP_SAMPLES
        return self._ring[i: i + CLIP_SAMPLES]

    # ------------------------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def _probs(self, start: int) -> Tensor:
        wave = torch.from_numpy(self._window())
        if self._features is not None:
            feats = self._features(wave, start)
        else:
            feats = self.logmel(wave[None])
        return self.net(feats)[0].float().softmax(-1)

    def _score_window(self) -> list[Detection]:
        start = self._seen - CLIP_SAMPLES
        if self._stateful is not None:
            with torch.inference_mode():
                # The last hop, zeros before the stream's start (the ring starts as zeros): the lead-in.
                logits = torch.from_numpy(np.asarray(self._stateful(self._window()[-self.hop:])))
            if start < 0:  # a call that fills the state: its logits are no whole window's
                return []
            self.windows += 1
            return self.decoder.step(logits.float().softmax(-1), start)
        probs = self._probs(start)
        self.windows += 1
        return self.decoder.step(probs, start)

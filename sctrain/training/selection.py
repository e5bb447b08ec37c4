"""Checkpoints chosen by detection (``kws.select_by: detection``), as openWakeWord and microWakeWord do.

Clip accuracy rewards a model for labelling clean 1 s clips; a detector is judged on hours of audio that is
mostly not a keyword. From ``kws.select_from`` of the epochs on, every evaluated checkpoint is also run as a
detector over validation streams of its own (validation speakers, the validation stretch of the noise,
generated negatives and the validation ``_unknown_`` words: none of it trained on), its thresholds
calibrated there for ``kws.target_fa_per_hour`` as the end of training does, and the checkpoint that finds
the most keywords under them becomes ``best_sc.pt`` (clip accuracy breaks ties). The streams are built once;
each evaluation only scores them (windows 100 ms apart: ~20,000 a selection with the defaults).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sctrain.artifacts.detector import StreamSettings
from sctrain.config import Config
from sctrain.data.dataset import PackedDataset
from sctrain.inference.events import EventDecoder
from sctrain.models.classifier import AudioClassifier
from sctrain.streameval.calibrate import calibrate
from sctrain.streameval.data import negative_streams, split_stream
from sctrain.streameval.posteriors import stream_posteriors

log = logging.getLogger(__name__)

SELECTION_SEED = StreamSettings.seed + 2  # not the test streams' (seed) nor calibration's (seed + 1)


@dataclass(frozen=True)
class Selection:
    keywords_found: float  # share of the selection stream's keywords found under the calibrated thresholds
    fa_per_hour_bound: float  # the largest per-keyword 95 % bound those thresholds were chosen for
    hours: float  # audio behind it


class _OnDevice(nn.Module):
    """Host audio in, host logits out, the classifier on the training device."""

    def __init__(self, classifier: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.classifier, self.device = classifier, device

    def forward(self, wave: Tensor) -> Tensor:
        return self.classifier(wave.to(self.device)).float().cpu()


class DetectionSelector:
    """Scores checkpoints by detection on validation streams built once from ``data``."""

    def __init__(self, cfg: Config, data: PackedDataset, labels: list[str]) -> None:
        k = cfg.kws
        self.streams = [split_stream(data, "validation", k.selection_minutes, SELECTION_SEED)]
        self.streams += negative_streams(data, "validation", k.selection_negative_minutes, SELECTION_SEED)
        self.decoder = EventDecoder(labels, **k.rules().decoder_kwargs())
        self.target, self.miss_slack = k.target_fa_per_hour, k.miss_slack
        self.hours = sum(s.duration_s for s in self.streams) / 3600
        self.first_epoch = int(k.select_from * cfg.train.epochs)  # epochs counted from 0
        log.info("checkpoints chosen by detection from epoch %d on: keywords found at %g false alarms/h on %.2f h "
                 "of validation streams", self.first_epoch + 1, self.target, self.hours)

    def active(self, epoch: int) -> bool:
        return epoch >= self.first_epoch

    @torch.no_grad()
    def score(self, net: nn.Module, features: nn.Module, device: torch.device) -> Selection:
        was_training = net.training, features.training
        classifier = _OnDevice(AudioClassifier(features, net).eval(), device)
        try:
            runs = [(stream_posteriors(classifier, s.wave, self.decoder.hop, progress=False), s) for s in self.streams]
        finally:
            net.train(was_training[0])
            features.train(was_training[1])
        c = calibrate(self.decoder, runs, self.target, miss_slack=self.miss_slack)
        return Selection(1.0 - c.validation.miss_rate(), max(c.bounds.values()), c.hours)

"""The detector pipeline: one home for the streams that calibrate a checkpoint's thresholds and test it, used at
the end of training (:mod:`sctrain.training.kws`) and by ``python -m sctrain.streameval`` (which can store its
calibration into an existing checkpoint: ``--store``).

Every stream is built from audio the model did not train on: the split's clips (validation calibrates, test
reports), the split's stretch of the noise recordings (training's noise augmentation and _silence_ cuts use the
train stretch, :data:`~sctrain.data.speechcommands.NOISE_STRETCH`) and audio generated from those
(:mod:`sctrain.streameval.generated`). A split's runs are its keyword stream (words every ~3 s over noise, then
noise alone and other words) plus ``negative`` minutes of keyword-free audio, pooled: hours, not minutes, so the
false-alarm rate can be bounded (:mod:`sctrain.streameval.bounds`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sctrain.artifacts.best import store_thresholds
from sctrain.artifacts.detector import DetectorRules, StreamSettings
from sctrain.data.dataset import PackedDataset
from sctrain.data.speechcommands import NOISE_STRETCH
from sctrain.inference.events import EventDecoder
from sctrain.inference.loading import LoadedModel
from sctrain.inference.streaming import model_thresholds
from sctrain.streameval.calibrate import Calibration, calibrate
from sctrain.streameval.data import file_streams, negative_streams, split_stream
from sctrain.streameval.evaluate import Evaluation, evaluate
from sctrain.streameval.posteriors import stream_posteriors
from sctrain.streameval.sweep import Run, sweep_scores

log = logging.getLogger(__name__)


class DetectorPipeline:
    """Streams of ``data`` scored by ``model`` under ``rules``, cached per split."""

    def __init__(self, model: LoadedModel, data: PackedDataset, settings: StreamSettings, rules: DetectorRules,
                 noise: Sequence[str | Path] | None = None, progress: bool = True,
                 negatives: dict[str, Sequence[Path]] | None = None) -> None:
        if data.labels != model.labels:
            raise ValueError(f"the dataset at {data.meta['root']} has labels {data.labels}, "
                             f"the checkpoint {model.labels}")
        self.model, self.data, self.settings, self.rules, self.progress = model, data, settings, rules, progress
        root = Path(data.meta["root"])
        self.noise = list(noise) if noise is not None else [root / p for p in data.meta["background_files"]]
        self.decoder = EventDecoder(model.labels, model_thresholds(model), **rules.decoder_kwargs())
        # Files of audio without keywords played after a split's own streams (streameval --negatives).
        self.negatives = {split: list(paths) for split, paths in (negatives or {}).items()}
        self._runs: dict[str, list[Run]] = {}

    def _score(self, stream, desc: str) -> Run:
        posteriors = stream_posteriors(self.model.cpu_classifier, stream.wave, self.decoder.hop,
                                       progress=self.progress, desc=desc)
        return posteriors, stream

    def runs(self, split: str) -> list[Run]:
        if split not in self._runs:
            s = self.settings
            minutes, negative, seed = ((s.validation_minutes, s.negative_minutes, s.seed + 1) if split == "validation"
                                       else (s.test_minutes, s.test_negative_minutes, s.seed))
            runs = [self._score(split_stream(self.data, split, minutes, seed, self.noise), f"scoring {split} windows")]
            for i, stream in enumerate(negative_streams(self.data, split, negative, seed, self.noise)):
                runs.append(self._score(stream, f"scoring {split} negatives {i + 1}"))
            for i, stream in enumerate(file_streams(self.negatives.get(split, []))):
                runs.append(self._score(stream, f"scoring --negatives files {i + 1}"))
            self._runs[split] = runs
        return self._runs[split]

    def audio(self, split: str) -> dict:
        """What a split's streams were made of, and that the model trained on none of it."""
        runs = self.runs(split)
        return {"split": split, "heard_in_training": False,
                "keywords": f"{split} split clips (speakers and words as listed for {split})",
                "noise_recordings": [str(p) for p in self.noise], "noise_stretch": list(NOISE_STRETCH[split]),
                "generated": ["coloured noise (white, pink, brown)", f"babble of reversed {split} clips",
                              f"{split} _unknown_ words, when the task has them"],
                "negative_files": [str(p) for p in self.negatives.get(split, [])],
                "same_kind_in_training": self._same_kind(),
                "keyword_stream_hours": round(runs[0][1].duration_s / 3600, 4),
                "negative_hours": round(sum(st.duration_s for _, st in runs[1:]) / 3600, 4),
                "hours": round(sum(st.duration_s for _, st in runs) / 3600, 4)}

    def _same_kind(self) -> list[str]:
        """Kinds of this audio the model heard in training from other speakers or recordings (not this audio)."""
        augment = self.model.config.augment
        kinds = []
        if augment.reversed_unknown_p > 0:
            kinds.append("reversed keyword clips of the train split as _unknown_ (augment.reversed_unknown_p): "
                         "the babble here is reversed speech of other speakers")
        if augment.generated_silence_p > 0:
            kinds.append("coloured noise as _silence_ (augment.generated_silence_p), drawn anew here")
        return kinds

    def calibrate(self) -> Calibration:
        calibration = calibrate(self.decoder, self.runs("validation"), self.settings.target_fa_per_hour,
                                miss_slack=self.settings.miss_slack)
        calibration.audio = self.audio("validation")
        return calibration

    def evaluate(self, split: str = "test", calibration: Calibration | None = None) -> Evaluation:
        evaluation = evaluate(self.decoder, self.runs(split))
        if calibration is not None:
            evaluation.calibration = calibration
            evaluation.calibrated = sweep_scores(self.decoder, self.runs(split), [calibration.thresholds])[0]
        return evaluation

    def store(self, best_path: str | Path, calibration: Calibration) -> None:
        """Write ``calibration``'s thresholds, the rules and these settings into ``best_path``, atomically: a
        failure leaves the old file as it was."""
        store_thresholds(best_path, calibration.thresholds, self.rules.to_dict(),
                         {"settings": self.settings.to_dict(), **calibration.to_dict()})

"""EventDecoder: the detector's decisions on posteriors alone, replayed for many thresholds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.features import LogMel
from sctrain.config import Config
from sctrain.inference.events import Detection, EventDecoder, keyword_thresholds
from sctrain.inference.loading import LoadedModel
from sctrain.inference.streaming import StreamingDetector
from sctrain.models.classifier import AudioClassifier
from sctrain.models.registry import create_model

LABELS = ["yes", "no", "up", "_unknown_", "_silence_"]
HOP = SAMPLE_RATE // 10


def bumps(n: int, peaks: list[tuple[int, str, float]]) -> np.ndarray:
    """[n, labels] posteriors: _silence_ everywhere but 5-window plateaus of ``height`` centred on window ``i``."""
    p = np.zeros((n, len(LABELS)), np.float32)
    p[:, LABELS.index("_silence_")] = 1.0
    for i, label, height in peaks:
        p[i - 2: i + 3] = (1 - height) / (len(LABELS) - 1)
        p[i - 2: i + 3, LABELS.index(label)] = height
    return p


def stepwise(decoder: EventDecoder, posteriors: np.ndarray) -> list[Detection]:
    decoder.reset()
    events = [e for i, p in enumerate(posteriors) for e in decoder.step(torch.from_numpy(p), i * HOP)]
    return events + decoder.flush()


def test_replay_equals_stepwise_and_peaks_land_on_their_centre():
    rng = np.random.default_rng(0)
    noisy = rng.dirichlet(np.ones(len(LABELS)) * 0.3, size=400).astype(np.float32)
    decoder = EventDecoder(LABELS)
    for post in (bumps(200, [(20, "yes", 0.9), (60, "no", 0.7), (61 + 30, "up", 0.55)]), noisy):
        for threshold in (0.3, 0.5, {"yes": 0.2, "no": 0.9}, [0.4, 0.6, 0.8, 1.0, 1.0]):
            assert decoder.decode(post, threshold) == stepwise(EventDecoder(LABELS, threshold), post)
    events = decoder.decode(bumps(200, [(20, "yes", 0.9), (60, "no", 0.7)]))
    assert [(e.label, e.start_s) for e in events] == [("yes", 2.0), ("no", 6.0)]
    assert events[0].score == pytest.approx(0.9, abs=1e-6)
    decoder.reset()  # windows one hop apart from 0 unless told otherwise
    assert [e for p in noisy for e in decoder.step(p)] + decoder.flush() == stepwise(decoder, noisy)
    sweep = decoder.sweep(noisy, [0.2, 0.5, 0.9])
    assert sweep == [decoder.decode(noisy, t) for t in (0.2, 0.5, 0.9)]


def test_per_keyword_thresholds():
    post = bumps(120, [(20, "yes", 0.6), (60, "no", 0.6)])
    decoder = EventDecoder(LABELS)
    assert [e.label for e in decoder.decode(post)] == ["yes", "no"]
    assert [e.label for e in decoder.decode(post, {"no": 0.7})] == ["yes"]
    assert [e.label for e in decoder.decode(post, [0.7, 0.5, 0.5, 0.5, 0.5])] == ["no"]
    # A keyword under its own threshold is not followed, even when it outscores the open candidate.
    mixed = bumps(40, [])
    mixed[10], mixed[11] = [0.5, 0, 0, 0, 0.5], [0, 0.7, 0, 0, 0.3]
    unsmoothed = EventDecoder(LABELS, smooth=1)
    assert [(e.label, e.start_s) for e in unsmoothed.decode(mixed, 0.4)] == [("no", 1.1)]
    assert [(e.label, e.start_s) for e in unsmoothed.decode(mixed, {"yes": 0.4, "no": 0.8})] == [("yes", 1.0)]
    # Fillers never fire, whatever they are given.
    assert np.isinf(keyword_thresholds(LABELS, 0.5)[3:]).all()
    assert decoder.decode(bumps(60, [(20, "_unknown_", 0.99)]), 0.05) == []


@pytest.mark.parametrize("threshold, match", [(0.0, r"\(0, 1\], got 0"), ({"yess": 0.5}, "unknown labels"),
                                              ({"no": 1.5}, "for 'no'"), ([0.5, 0.5], "5 values"),
                                              (float("nan"), "got nan")])
def test_bad_thresholds(threshold, match):
    with pytest.raises(ValueError, match=match):
        EventDecoder(LABELS, threshold)


def tiny_model(labels=LABELS) -> LoadedModel:
    cfg = Config()
    return LoadedModel(AudioClassifier(LogMel(cfg.features), create_model(cfg.model, cfg.features, len(labels))).eval(),
                       list(labels), cfg, Path("untrained"))


def test_detector_events_replay_from_its_own_posteriors():
    """The detector's events are the decoder's over the posteriors it computed (the net is scripted)."""
    script = bumps(60, [(12, "yes", 0.8), (40, "up", 0.6)])
    seen = []

    def net(features: torch.Tensor) -> torch.Tensor:
        logits = torch.from_numpy(np.log(script[len(seen)] + 1e-6))[None]
        seen.append(logits[0].float().softmax(-1).numpy())  # as the detector does
        return logits

    wave = np.random.default_rng(1).standard_normal((len(script) - 1) * HOP + SAMPLE_RATE).astype(np.float32) * 0.01
    for threshold in (0.5, {"yes": 0.9}):
        seen.clear()
        detector = StreamingDetector(tiny_model(), threshold=threshold, net=net)
        events = detector.process(wave, chunk=777)
        assert detector.windows == len(script) == len(seen)
        assert events == EventDecoder(LABELS, threshold).decode(np.stack(seen))
        assert [e.label for e in events] == (["yes", "up"] if threshold == 0.5 else ["up"])


def test_detector_rejects_bad_per_keyword_thresholds():
    with pytest.raises(ValueError):
        StreamingDetector(tiny_model(), threshold={"nope": 0.5})
    with pytest.raises(ValueError):
        StreamingDetector(tiny_model(), threshold=[0.5, 2.0, 0.5, 0.5, 0.5])

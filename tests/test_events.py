"""EventDecoder: the detector's decisions on posteriors alone, replayed for many thresholds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sctrain.artifacts.detector import DetectorRules
from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.features import LogMel
from sctrain.config import Config, ConfigError, load_config
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
    first_rules = {"smooth": 5, "refractory_ms": 1000.0, "filler_gate": False}  # EventDecoder's own defaults
    # With the default rules the 0.6 "up" plateau, averaged over 8 windows, stays under _silence_: gated.
    for threshold, rules, labels in ((0.5, first_rules, ["yes", "up"]), ({"yes": 0.9}, first_rules, ["up"]),
                                     (0.3, {}, ["yes"])):
        seen.clear()
        detector = StreamingDetector(tiny_model(), threshold=threshold, net=net, **rules)
        events = detector.process(wave, chunk=777)
        assert detector.windows == len(script) == len(seen)
        assert events == EventDecoder(LABELS, threshold, **detector.rules.decoder_kwargs()).decode(np.stack(seen))
        assert [e.label for e in events] == labels
    assert StreamingDetector(tiny_model()).rules == DetectorRules()  # no stored rules: the config's (defaults)


def test_detector_rejects_bad_per_keyword_thresholds():
    with pytest.raises(ValueError):
        StreamingDetector(tiny_model(), threshold={"nope": 0.5})
    with pytest.raises(ValueError):
        StreamingDetector(tiny_model(), threshold=[0.5, 2.0, 0.5, 0.5, 0.5])


# ------------------------------------------------------------- the detector rules the DET curves kept

RULES = DetectorRules()  # smoothing 8, refractory 1.5 s, filler gate
FIRST = EventDecoder(LABELS)  # the first rules: smoothing 5, refractory 1 s, no gate


def test_replay_equals_stepwise_with_the_filler_gate():
    noisy = np.random.default_rng(2).dirichlet(np.ones(len(LABELS)) * 0.3, size=400).astype(np.float32)
    for threshold in (0.2, 0.5, {"yes": 0.1, "no": 0.3}):
        decoder = EventDecoder(LABELS, threshold, **RULES.decoder_kwargs())
        assert decoder.decode(noisy) == stepwise(decoder, noisy)
    assert EventDecoder(LABELS, 0.2, filler_gate=True).decode(noisy) != FIRST.decode(noisy, 0.2)


def test_filler_gate_drops_a_keyword_the_model_scores_below_silence():
    """At a low (calibrated) threshold, noise the model calls _silence_ but with some "yes" in it fires
    without the gate; a word the model hears as "yes" fires with and without it."""
    post = bumps(120, [(80, "yes", 0.8)])
    post[20:30] = [0.35, 0.05, 0.05, 0.05, 0.5]  # yes, no, up, _unknown_, _silence_
    gated = EventDecoder(LABELS, 0.3, smooth=5, filler_gate=True)
    assert [(e.label, e.start_s) for e in FIRST.decode(post, 0.3)] == [("yes", 2.2), ("yes", 8.0)]
    assert [(e.label, e.start_s) for e in gated.decode(post)] == [("yes", 8.0)]


def test_longer_smoothing_drops_a_short_spike():
    """A 0.3 s posterior spike (4 windows) reaches 0.5 when averaged over 5 windows, not over 8; a spoken
    word (the 1 s window holds it for about 9 hops) fires with both."""
    post = bumps(120, [])
    post[20:24] = [0, 0.75, 0, 0, 0.25]
    post[76:85] = [0.9, 0, 0, 0, 0.1]
    assert [e.label for e in FIRST.decode(post)] == ["no", "yes"]
    assert [e.label for e in EventDecoder(LABELS, 0.5, **RULES.decoder_kwargs()).decode(post)] == ["yes"]


def test_longer_refractory_time_drops_a_words_second_peak():
    """A word whose score dips and peaks again 1.2 s later (its tail, still inside the sliding window) is one
    event with a 1.5 s refractory time and two with 1 s; a word 2 s after it still fires."""
    post = bumps(120, [(20, "yes", 0.9), (32, "yes", 0.7), (52, "no", 0.9)])
    assert [(e.label, e.start_s) for e in FIRST.decode(post)] == [("yes", 2.0), ("yes", 3.2), ("no", 5.2)]
    kept = EventDecoder(LABELS, 0.5, smooth=5, refractory_s=RULES.refractory_ms / 1000)
    assert [(e.label, e.start_s) for e in kept.decode(post)] == [("yes", 2.0), ("no", 5.2)]


@pytest.mark.parametrize("stored, match", [({"smooth": 0}, "smooth must be an integer >= 1, got 0"),
                                           ({"smooth": 2.5}, "smooth must be an integer"),
                                           ({"refractory_ms": -1}, "refractory_ms must be a finite number >= 0"),
                                           ({"filler_gate": "yes"}, "filler_gate must be true or false"),
                                           ({"persist": 3}, r"unknown detector rules \['persist'\]"),
                                           ([8], "must be a mapping")])
def test_detector_rules_are_checked(stored, match):
    with pytest.raises(ValueError, match=match):
        DetectorRules.from_dict(stored)


def test_detector_rules_config_keys():
    assert Config().kws.rules() == RULES == DetectorRules.from_dict(RULES.to_dict())
    cfg = load_config(None, ["kws.smooth=3", "kws.refractory_ms=800", "kws.filler_gate=false"])
    assert cfg.kws.rules() == DetectorRules(3, 800.0, False)
    for override, message in (("kws.smooth=0", "config key 'kws.smooth': must be >= 1"),
                              ("kws.refractory_ms=-5", "config key 'kws.refractory_ms': must be >= 0"),
                              ("kws.filler_gate=maybe", "config key 'kws.filler_gate': must be a bool"),
                              ("kws.persist=3", "unknown config key 'kws.persist'")):
        with pytest.raises(ConfigError, match=message) as e:
            load_config(None, [override])
        assert "\n" not in str(e.value)

"""Streaming keyword detection: a long recording built from real clips at known times, separated by silence
and background noise, run through the detector in microphone-sized chunks."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.features import LogMel
from sctrain.audio.io import read_audio, read_audio_blocks, to_model_rate
from sctrain.cli import predict
from sctrain.config import Config, FeatureConfig
from sctrain.inference.loading import LoadedModel
from sctrain.inference.predict import window_probs
from sctrain.inference.streaming import IncrementalLogMel, StreamingDetector
from sctrain.models.classifier import AudioClassifier
from sctrain.models.registry import create_model

# Background recordings for the noise gaps; their last 10 %, which no training _silence_ cut comes from.
NOISES = ("doing_the_dishes.wav", "running_tap.wav", "exercise_bike.wav", "pink_noise.wav")
TOLERANCE_S = 0.5


def correct_clips(model, root: Path, per_word: int = 5, min_prob: float = 0.7) -> list[tuple[str, np.ndarray]]:
    """Test-split clips (speakers never trained on) that the model labels right on their own.

    "On their own" as the detector sees a word: the clip alone on silence, scored at the window offsets
    5 windows 100 ms apart, centred on the clip, average (the detector's first smoothing), mean probability of
    the right word >= ``min_prob``. A model that only recognises a clip at one exact offset would fail
    the test for its own reasons, not the detector's.
    """
    chosen: dict[str, list] = {}
    offsets = np.arange(-2, 3) * SAMPLE_RATE // 10
    for rel in sorted((root / "testing_list.txt").read_text().split()):
        word = rel.split("/")[0]
        if len(chosen.setdefault(word, [])) >= per_word:
            continue
        wave = read_audio(root / rel)
        padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), wave, np.zeros(2 * SAMPLE_RATE, np.float32)])
        windows = np.stack([padded[SAMPLE_RATE + o: 2 * SAMPLE_RATE + o] for o in offsets])
        probs = window_probs(model.classifier, windows).mean(0)
        if model.labels[int(probs.argmax())] == word and probs.max() >= min_prob:
            chosen[word].append((word, wave))
    return [c for clips in chosen.values() for c in clips]


def build_stream(clips, root: Path, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Words in shuffled order, each preceded by 1.2-2.0 s of either digital silence or a background
    recording 10-20 dB below the word (inside the 5-30 dB SNR range the model was trained with); returns
    the waveform and (clip start in s, word) per word."""
    rng = np.random.default_rng(seed)
    noises = []
    for name in NOISES:
        rec = read_audio(root / "_background_noise_" / name)
        noises.append(rec[int(0.9 * len(rec)):])
    parts, truth, t = [], [], 0
    for i in rng.permutation(len(clips)):
        word, clip = clips[i]
        gap = int(rng.uniform(1.2, 2.0) * SAMPLE_RATE)
        if i % 2:
            rec = noises[rng.integers(len(noises))]
            start = rng.integers(0, len(rec) - gap)
            seg = rec[start: start + gap]
            level = _rms(clip) * 10 ** (-rng.uniform(10, 20) / 20)
            seg = seg * (level / max(1e-9, _rms(seg)))
        else:
            seg = np.zeros(gap, dtype=np.float32)
        parts += [seg.astype(np.float32), clip]
        truth.append(((t + gap) / SAMPLE_RATE, word))
        t += gap + len(clip)
    parts.append(np.zeros(SAMPLE_RATE, dtype=np.float32))
    return np.concatenate(parts), truth


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def match(events, truth) -> tuple[int, int]:
    """(words found with the right label within TOLERANCE_S, events matching no word)."""
    used = set()
    found = 0
    for t0, word in truth:
        near = [(abs(e.start_s - t0), j) for j, e in enumerate(events)
                if j not in used and e.label == word and abs(e.start_s - t0) <= TOLERANCE_S]
        if near:
            used.add(min(near)[1])
            found += 1
    return found, len(events) - len(used)


@pytest.mark.slow
def test_stream_finds_known_words(model, mini_root):
    clips = correct_clips(model, mini_root)
    assert len(clips) >= 24, f"only {len(clips)} confidently correct test clips: the fixture model is too weak"
    wave, truth = build_stream(clips, mini_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the deployment setting the real-time factor is quoted for
    try:
        detector = StreamingDetector(model)  # defaults: 100 ms hop, threshold 0.5, the kws rules (8, 1.5 s, gate)
        events = []
        rng = np.random.default_rng(1)
        pos = 0
        while pos < len(wave):  # irregular chunk sizes, as microphone callbacks deliver them
            n = int(rng.integers(200, 4000))
            events += detector.feed(wave[pos: pos + n])
            pos += n
        events += detector.flush()
    finally:
        torch.set_num_threads(threads)
    found, false_alarms = match(events, truth)
    summary = f"{found}/{len(truth)} words found, {false_alarms} false alarms in {len(wave) / SAMPLE_RATE:.0f} s"
    assert found >= 0.9 * len(truth), summary
    assert false_alarms <= len(truth) // 6, summary  # about one per 15 s of audio
    assert detector.windows == (len(wave) - SAMPLE_RATE) // detector.hop + 1
    assert 0 < detector.real_time_factor < 1.0, f"real-time factor {detector.real_time_factor:.3f}"


def test_chunking_and_incremental_features_do_not_change_events(model, mini_root):
    clips = correct_clips(model, mini_root, per_word=1)
    wave, _ = build_stream(clips, mini_root, seed=3)
    reference = StreamingDetector(model).process(wave, chunk=1600)
    assert reference, "no events at all: nothing to compare"
    for detector, chunk in ((StreamingDetector(model), 517), (StreamingDetector(model), len(wave)),
                            (StreamingDetector(model, incremental=True), 1600)):
        events = detector.process(wave, chunk=chunk)
        assert [e.label for e in events] == [e.label for e in reference]
        assert np.allclose([e.start_s for e in events], [e.start_s for e in reference])
        assert np.allclose([e.score for e in events], [e.score for e in reference], atol=1e-4)


@pytest.mark.parametrize("features", [FeatureConfig(), FeatureConfig(n_mels=40, hop_length=320),
                                      FeatureConfig(n_fft=400, win_length=400, hop_length=128)])
def test_incremental_logmel_equals_whole_window(features):
    logmel = LogMel(features)
    incremental = IncrementalLogMel(logmel)
    stream = torch.from_numpy(np.random.default_rng(0).standard_normal(4 * SAMPLE_RATE).astype(np.float32)) * 0.1
    hop = features.hop_length * 10
    for start in list(range(0, 2 * SAMPLE_RATE, hop)) + [3 * SAMPLE_RATE]:  # the last one jumps ahead
        window = stream[start: start + SAMPLE_RATE]
        expected = logmel(window[None])
        got = incremental(window, start)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4), (start, (got - expected).abs().max())


def test_detector_rejects_bad_settings():
    cfg = Config()
    net = create_model(cfg.model, cfg.features, 3)
    model = LoadedModel(AudioClassifier(LogMel(cfg.features), net).eval(), ["a", "b", "c"], cfg, Path("untrained"))
    for kwargs in ({"hop_ms": 0}, {"hop_ms": 1500}, {"threshold": 0}, {"smooth": 0}):
        with pytest.raises(ValueError):
            StreamingDetector(model, **kwargs)


# ------------------------------------------------------------------------ long files, read block by block

@pytest.mark.parametrize("rate,channels", [(SAMPLE_RATE, 1), (SAMPLE_RATE, 2), (44100, 1), (22050, 2), (8000, 1)])
def test_blocks_join_to_the_whole_file(tmp_path, rate, channels):
    # At 16 kHz the blocks are the file's own samples; otherwise each block is resampled with its neighbours'
    # samples around it, which must give the whole-file resampling (to float rounding), with no seam.
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (int(rate * 7.3), channels)).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, rate, subtype="FLOAT")
    blocks = list(read_audio_blocks(tmp_path / "x.wav", block_s=2.0))
    whole = read_audio(tmp_path / "x.wav")
    assert len(blocks) >= 3
    joined = np.concatenate(blocks)
    assert joined.shape == whole.shape and joined.dtype == np.float32
    if rate == SAMPLE_RATE:
        assert np.array_equal(joined, whole)
    else:
        assert np.abs(joined - whole).max() < 1e-6


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 44100])
def test_detections_from_blocks_equal_the_in_memory_run(model, mini_root, trained_checkpoint, tmp_path, capsys, rate):
    clips = correct_clips(model, mini_root, per_word=1)
    wave, _ = build_stream(clips, mini_root, seed=3)
    path = tmp_path / "long.wav"
    sf.write(path, wave if rate == SAMPLE_RATE else to_model_rate(wave, SAMPLE_RATE, rate), rate, subtype="FLOAT")
    reference = StreamingDetector(model).process(read_audio(path))
    assert reference, "no events at all: nothing to compare"
    blocks = read_audio_blocks(path, block_s=3.0)  # the file is several blocks long
    events = StreamingDetector(model).process_blocks(blocks)
    assert [(e.label, e.start_s) for e in events] == [(e.label, e.start_s) for e in reference]
    assert np.allclose([e.score for e in events], [e.score for e in reference], atol=1e-5, rtol=0)
    # The command line reads blocks too (10 s each: this file is longer), with the same events.
    assert predict.main([str(trained_checkpoint), str(path), "--stream", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [(e["label"], e["start_s"]) for e in result["events"]] == [(e.label, e.start_s) for e in reference]
    assert result["duration_s"] == pytest.approx(len(read_audio(path)) / SAMPLE_RATE)


def test_predict_stream_memory_does_not_grow_with_the_file(trained_checkpoint, tmp_path, capsys):
    # 5 minutes of 16 kHz audio are 19 MB as float32: reading the file whole (as predict --stream did) peaks
    # above that, block by block stays near one 10 s block (0.6 MB). numpy's buffers are traced by tracemalloc.
    path = tmp_path / "five_minutes.wav"
    noise = np.random.default_rng(0).normal(0, 0.05, 5 * 60 * SAMPLE_RATE).astype(np.float32)
    sf.write(path, noise, SAMPLE_RATE, subtype="PCM_16")
    del noise
    tracemalloc.start()
    try:
        assert predict.main([str(trained_checkpoint), str(path), "--stream", "--hop-ms", "1000", "--json"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert json.loads(capsys.readouterr().out)["results"][0]["windows"] == 5 * 60
    assert peak < 6e6, f"peak {peak / 1e6:.1f} MB of traced memory for a 19 MB (float32) file"

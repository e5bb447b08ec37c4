"""Prediction on files of any rate / channel count / length, the fast inference copy, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from support import REPO

from sctrain.artifacts.best import load_best
from sctrain.artifacts.files import atomic_save
from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.io import AudioError, read_audio, to_model_rate
from sctrain.cli import predict
from sctrain.inference.predict import file_windows, predict_wave


@pytest.fixture(scope="module")
def confident_clip(model, mini_root) -> tuple[str, np.ndarray]:
    """A test-split clip the model labels right with p >= 0.9 (so format changes should not flip it)."""
    for rel in sorted((mini_root / "testing_list.txt").read_text().split()):
        wave = read_audio(mini_root / rel)
        top = predict_wave(model, wave, k=1)["top"][0]
        if top["label"] == rel.split("/")[0] and top["prob"] >= 0.9:
            return top["label"], wave
    pytest.fail("no test clip is classified right with p >= 0.9: the fixture model is too weak")


# ---------------------------------------------------------------------------------------------- audio

def test_read_audio_mixes_down_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 44100, subtype="PCM_16")
    wave = read_audio(tmp_path / "s.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == SAMPLE_RATE
    # Mixdown averages the channels: a 0.3 amplitude tone, and still 440 Hz after resampling.
    assert abs(np.abs(wave[1000:-1000]).max() - 0.3) < 0.01
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(wave) - 440) <= 1


def test_to_model_rate_matches_int16_training_scale(tmp_path):
    clip = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)
    sf.write(tmp_path / "c.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    assert np.array_equal(read_audio(tmp_path / "c.wav"), clip.astype(np.float32) / 32768.0)
    assert np.array_equal(to_model_rate(clip[:, None].astype(np.float32), SAMPLE_RATE), clip.astype(np.float32))


def test_file_windows_cover_any_length():
    short, starts = file_windows(np.ones(100, np.float32))
    assert short.shape == (1, SAMPLE_RATE) and short[0, :100].all() and not short[0, 100:].any()
    wave = np.arange(int(2.3 * SAMPLE_RATE), dtype=np.float32)
    windows, starts = file_windows(wave)
    assert windows.shape[1] == SAMPLE_RATE and starts[0] == 0 and starts[-1] == len(wave) - SAMPLE_RATE
    assert np.all(np.diff(starts) <= SAMPLE_RATE // 4)
    assert all(np.array_equal(w, wave[s: s + SAMPLE_RATE]) for w, s in zip(windows, starts))


# ----------------------------------------------------------------------------------------- prediction

def test_cpu_classifier_matches_checkpoint_model(model, mini_root):
    files = sorted((mini_root / "testing_list.txt").read_text().split())[::11]
    audio = torch.from_numpy(np.stack([file_windows(read_audio(mini_root / f))[0][0] for f in files]))
    with torch.inference_mode():
        reference, fast = model.classifier(audio), model.cpu_classifier(audio)
    assert torch.allclose(reference, fast, atol=1e-4), (reference - fast).abs().max()
    assert torch.equal(reference.argmax(1), fast.argmax(1))


def _write_variants(folder: Path, wave: np.ndarray) -> dict[str, dict]:
    """The same word as files of other rates, channel counts, encodings and lengths."""
    def at(rate):
        return AF.resample(torch.from_numpy(wave), SAMPLE_RATE, rate).numpy()

    rng = np.random.default_rng(0)
    long = np.concatenate([np.zeros(int(1.3 * SAMPLE_RATE)), wave, 0.003 * rng.standard_normal(int(1.2 * SAMPLE_RATE))])
    variants = {
        "stereo_44k1.wav": (np.stack([at(44100), 0.8 * at(44100)], 1), 44100, "PCM_16", {"channels": 2}),
        "mono_22k05_float.wav": (at(22050), 22050, "FLOAT", {"channels": 1}),
        "three_ch_48k.flac": (np.stack([at(48000)] * 3, 1) * 0.9, 48000, "PCM_24", {"channels": 3}),
        "long_16k.wav": (long, SAMPLE_RATE, "PCM_16", {"windows_min": 2, "start_near": 1.3}),
    }
    out = {}
    for name, (data, rate, subtype, expect) in variants.items():
        sf.write(folder / name, data, rate, subtype=subtype)
        out[str(folder / name)] = {"rate": rate, **expect}
    return out


def test_predict_cli_on_other_rates_channels_and_lengths(trained_checkpoint, confident_clip, tmp_path):
    word, wave = confident_clip
    variants = _write_variants(tmp_path, wave)
    sf.write(tmp_path / "short_noise.wav", 0.01 * np.random.default_rng(1).standard_normal(3000), 8000)
    proc = subprocess.run([sys.executable, "-m", "sctrain.predict", str(trained_checkpoint), *variants,
                           str(tmp_path / "short_noise.wav"), "--json", "--top-k", "2"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_file = {r["file"]: r for r in report["results"]}
    for path, expect in variants.items():
        r = by_file[path]
        assert r["sample_rate"] == expect["rate"]
        assert r["top"][0]["label"] == word, (path, r)
        assert len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"]
        if "channels" in expect:
            assert r["channels"] == expect["channels"]
        if "start_near" in expect:
            assert r["windows"] >= expect["windows_min"]
            assert abs(r["window_start_s"] - expect["start_near"]) <= 0.3, r
    short = by_file[str(tmp_path / "short_noise.wav")]
    assert short["windows"] == 1 and abs(short["duration_s"] - 3000 / 8000) < 0.01
    assert 0 < short["top"][0]["prob"] <= 1


def test_predict_text_and_stream_output(trained_checkpoint, confident_clip, tmp_path, capsys):
    word, wave = confident_clip
    sf.write(tmp_path / "w.wav", np.concatenate([np.zeros(SAMPLE_RATE), wave, np.zeros(SAMPLE_RATE)]), SAMPLE_RATE)
    assert predict.main([str(trained_checkpoint), str(tmp_path / "w.wav"), "--top-k", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'w.wav'}: {word} ")
    assert predict.main([str(trained_checkpoint), str(tmp_path / "w.wav"), "--stream", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [e["label"] for e in result["events"]] == [word]
    assert abs(result["events"][0]["start_s"] - 1.0) <= 0.5
    assert result["real_time_factor"] > 0


# ------------------------------------------------------------------------------------------ bad input

def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sctrain: error: ") and "Traceback" not in err[0]
    for name in names:
        assert name in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("case", ["missing", "not_audio", "empty", "no_samples", "nan", "folder"])
def test_bad_audio_gives_one_line(trained_checkpoint, tmp_path, capsys, case):
    path = tmp_path / f"{case}.wav"
    if case == "not_audio":
        path.write_text("this is not a WAV file\n" * 20)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "no_samples":
        sf.write(path, np.zeros(0, np.int16), SAMPLE_RATE)
    elif case == "nan":
        sf.write(path, np.full(1000, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT")
    elif case == "folder":
        path.mkdir()
    assert predict.main([str(trained_checkpoint), str(path)]) == 2
    _one_error_line(capsys, str(path))
    with pytest.raises(AudioError):
        read_audio(path)


def test_one_bad_file_does_not_stop_the_others(trained_checkpoint, confident_clip, tmp_path, capsys):
    word, wave = confident_clip
    sf.write(tmp_path / "good.wav", wave, SAMPLE_RATE)
    assert predict.main([str(trained_checkpoint), str(tmp_path / "absent.wav"), str(tmp_path / "good.wav")]) == 2
    captured = capsys.readouterr()
    assert f"good.wav: {word}" in captured.out
    assert captured.err.count("sctrain: error:") == 1


def _bad_checkpoint(case: str, good: Path, path: Path) -> None:
    ckpt = load_best(good)
    if case == "other_format":
        atomic_save({**ckpt, "format": "sctrain-best/99"}, path)
    elif case == "missing_key":
        atomic_save({k: v for k, v in ckpt.items() if k != "labels"}, path)
    elif case == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_a_checkpoint":
        path.write_text("weights: none\n")
    elif case == "foreign_config":
        atomic_save({**ckpt, "config": {**ckpt["config"], "optimizer": {"name": "sgd"}}}, path)
    elif case == "wrong_shapes":
        config = {**ckpt["config"], "model": {**ckpt["config"]["model"], "width": 24}}
        atomic_save({**ckpt, "config": config}, path)


@pytest.mark.parametrize("case", ["missing", "other_format", "missing_key", "truncated", "not_a_checkpoint",
                                  "foreign_config", "wrong_shapes"])
def test_bad_checkpoint_gives_one_line(trained_checkpoint, confident_clip, tmp_path, capsys, case):
    path = tmp_path / f"{case}.pt"
    if case != "missing":
        _bad_checkpoint(case, trained_checkpoint, path)
    sf.write(tmp_path / "w.wav", confident_clip[1], SAMPLE_RATE)
    assert predict.main([str(path), str(tmp_path / "w.wav")]) == 2
    _one_error_line(capsys, str(path))


def test_cli_entry_point_prints_no_traceback(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04 truncated")
    proc = subprocess.run([sys.executable, "-m", "sctrain.predict", str(tmp_path / "x.pt"), "nothing.wav"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sctrain: error: checkpoint ") and "x.pt" in lines[0]

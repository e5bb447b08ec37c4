"""Augmentation as ordered stages: the chain, reverberation, impulse responses and the kernel's prefix."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from support import on_both_paths

from sctrain.audio import cpu_kernels
from sctrain.audio.assets import AugmentAssets
from sctrain.audio.augment import WaveAugment
from sctrain.audio.rir import fft_convolve, generated_rirs, load_rirs
from sctrain.audio.stages import stage_classes
from sctrain.config import AugmentConfig, ConfigError

SR = 16000


def speech_like(batch: int, length: int = SR, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    f = 200 + 2000 * torch.rand(batch, 3, 1, generator=g)
    return (torch.sin(2 * math.pi * f * t).sum(1) * torch.exp(-4 * t) / 4).float()


def test_stages_run_in_the_order_of_a_recording():
    assert [cls.name for cls in stage_classes()] == ["gain", "shift", "reverb", "noise"]
    aug = WaveAugment(AugmentConfig(shift_p=0.0, reverb_p=0.5), AugmentAssets.for_config(AugmentConfig(reverb_p=0.5)))
    assert [s.name for s in aug.stages] == ["gain", "reverb", "noise"]  # shift_p = 0: left out, draws nothing


def test_reverb_with_a_unit_impulse_changes_nothing():
    cfg = AugmentConfig(reverb_p=1.0, gain_db=0.0, shift_p=0.0, noise_p=0.0)
    impulse = torch.zeros(3, 800)
    impulse[:, 0] = 1.0
    aug = WaveAugment(cfg, AugmentAssets(rirs=impulse)).train()
    wave = speech_like(4)
    assert torch.allclose(aug(wave), wave, atol=1e-5)


def test_reverb_equals_numpy_convolution_at_the_clip_level():
    # Short rooms and clips keep numpy's direct convolution quick.
    cfg = AugmentConfig(reverb_p=0.5, gain_db=0.0, shift_p=0.0, noise_p=0.0, rt60_min=0.1, rt60_max=0.25)
    assets = AugmentAssets.for_config(cfg)
    aug = WaveAugment(cfg, assets).train()
    wave = speech_like(16, SR // 2, seed=2)
    torch.manual_seed(1)
    draw = aug.draw(16, SR // 2, torch.device("cpu"))
    out = aug.apply(wave, draw)
    on = draw["reverb"].on
    assert 0 < int(on.sum()) < 16
    assert torch.equal(out[~on], wave[~on])
    for b in on.nonzero().flatten().tolist():
        h = assets.rirs[draw["reverb"].rir[b]].numpy()
        wet = np.convolve(wave[b].numpy().astype(np.float64), h)[:SR // 2]
        wet *= np.sqrt(np.mean(wave[b].numpy().astype(np.float64) ** 2) / np.mean(wet ** 2))  # its own level
        np.testing.assert_allclose(out[b].numpy(), wet, atol=2e-5)


def test_fft_convolve_is_linear_convolution():
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(2, 1000, generator=g), torch.randn(2, 333, generator=g)
    expected = np.stack([np.convolve(x[i].numpy(), h[i].numpy())[:1000] for i in range(2)])
    np.testing.assert_allclose(fft_convolve(x, h).numpy(), expected, atol=1e-4)


def schroeder_rt60(h: np.ndarray) -> float:
    """RT60 from the slope of the energy decay curve between -5 and -25 dB (T20, x3), the ISO 3382 way."""
    edc = np.cumsum((h ** 2)[::-1])[::-1]
    db = 10 * np.log10(edc / edc[0])
    lo, hi = np.argmax(db <= -5), np.argmax(db <= -25)
    slope = np.polyfit(np.arange(lo, hi) / SR, db[lo:hi], 1)[0]
    return -60.0 / slope


def test_generated_rooms_have_the_drawn_reverberation_time():
    for rt60 in (0.3, 0.8):
        rirs = generated_rirs(8, rt60, rt60, seed=3)
        assert rirs.shape == (8, math.ceil(rt60 * SR)) and np.all(rirs[:, 0] == 1.0)  # direct path first
        measured = [schroeder_rt60(h) for h in rirs]
        assert np.allclose(measured, rt60, rtol=0.2), measured
    assert np.array_equal(generated_rirs(4, 0.2, 1.0, seed=7), generated_rirs(4, 0.2, 1.0, seed=7))
    assert not np.array_equal(generated_rirs(4, 0.2, 1.0, seed=7), generated_rirs(4, 0.2, 1.0, seed=8))


def test_loaded_rirs_are_resampled_and_start_at_their_direct_path(tmp_path):
    h = generated_rirs(1, 0.4, 0.4, seed=0)[0] * 0.5
    delayed = np.concatenate([np.zeros(400, np.float32), h])  # 25 ms of travel before the direct sound at 16 kHz
    sf.write(tmp_path / "room.wav", delayed, SR)
    sf.write(tmp_path / "hall.flac", np.stack([delayed[::2], delayed[::2]], 1), SR // 2)  # stereo, 8 kHz
    rirs = load_rirs(tmp_path)
    assert rirs.shape[0] == 2
    assert np.argmax(np.abs(rirs[1])) == 0 and np.argmax(np.abs(rirs[0])) == 0
    np.testing.assert_allclose(rirs[1][:len(h)], h, atol=1e-4)  # the 16 kHz one: as written, less its delay
    cfg = AugmentConfig(reverb_p=0.3, rir_dir=str(tmp_path))
    assert AugmentAssets.for_config(cfg).rirs.shape[0] == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="augment.rir_dir: no .wav"):
        load_rirs(tmp_path / "empty")


@pytest.mark.parametrize("bad,match", [(dict(reverb_p=1.5), "augment.reverb_p"),
                                       (dict(rt60_min=1.2, rt60_max=1.0), "augment.rt60_min"),
                                       (dict(rir_count=0), "augment.rir_count")])
def test_reverb_keys_are_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        AugmentConfig(**bad)


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C kernels are not built")
def test_kernel_takes_the_prefix_before_reverb(monkeypatch):
    # gain + shift in the kernel, reverb and noise in PyTorch: the same result as the PyTorch chain.
    cfg = AugmentConfig(reverb_p=0.7, noise_p=0.8, shift_p=0.8, gain_db=6.0)
    aug = WaveAugment(cfg, AugmentAssets.for_config(cfg, noise=torch.randn(2, SR) * 0.1)).train()
    assert aug._kernel_stages == ["gain", "shift"]
    audio = (speech_like(24, seed=4) * 20000).to(torch.int16)
    out = on_both_paths(monkeypatch, lambda: aug(audio), seed=11)
    assert torch.allclose(out["1"], out["0"], rtol=1e-5, atol=1e-5)

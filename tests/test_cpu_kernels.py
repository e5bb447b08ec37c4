"""The compiled CPU kernels (sctrain/audio/csrc/cpu_kernels.c) against the PyTorch ops they stand in for."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from support import on_both_paths
from torchaudio.functional import melscale_fbanks

from sctrain.audio import cpu_kernels
from sctrain.audio.assets import AugmentAssets
from sctrain.audio.augment import WaveAugment
from sctrain.audio.features import LogMel, power_spectrum
from sctrain.audio.stages.noise import RMS_FLOOR as _RMS_FLOOR
from sctrain.config import AugmentConfig, FeatureConfig

SR = 16000

built = pytest.mark.skipif(cpu_kernels._cpu_kernels is None, reason="sctrain.audio._cpu_kernels is not built")


def speech_like(batch: int, length: int = SR, seed: int = 0) -> torch.Tensor:
    """A few decaying sines per clip, peak ~0.5, one silent clip."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    wave = (torch.sin(2 * math.pi * (100 + 3000 * torch.rand(batch, 3, 1, generator=g)) * t).sum(1)
            * torch.exp(-3 * t) / 6)
    wave[0] = 0.0
    return wave


@built
@pytest.mark.parametrize("int16", [True, False])
@pytest.mark.parametrize("cfg", [
    AugmentConfig(shift_p=0.8, shift_max_ms=100, noise_p=0.5, background_p=0.8, gain_db=6.0),
    AugmentConfig(shift_p=1.0, shift_max_ms=2000, noise_p=1.0, background_p=0.0, gain_db=0.0),  # shifts past the clip
    AugmentConfig(shift_p=0.0, noise_p=1.0, background_p=1.0, snr_db_min=0, snr_db_max=0),
    AugmentConfig(shift_p=1.0, shift_max_ms=50, noise_p=0.0, gain_db=3.0),
], ids=["recipe", "long-shifts-white", "background-only", "no-noise"])
def test_augment_kernel_applies_the_same_draw(int16, cfg):
    torch.manual_seed(0)
    aug = WaveAugment(cfg, AugmentAssets(torch.randn(3, SR // 2) * torch.tensor([0.0, 0.1, 1.0])[:, None])).train()
    wave = speech_like(48, 12000)
    audio = (wave * 20000).to(torch.int16) if int16 else wave
    draw = aug.draw(48, 12000, torch.device("cpu"), int16=int16)
    reference = aug.apply(audio, draw)
    out = aug._apply_kernel(audio, draw)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6)
    assert out[0].abs().max() < 1e-4  # the silent clip stays (almost) silent


@built
def test_augment_kernel_threads_agree():
    audio = (speech_like(40) * 20000).to(torch.int16)
    args = (torch.randint(-3000, 3000, (40,)), torch.rand(40), torch.randn(5 * SR),
            torch.randint(0, 4 * SR, (40,)), torch.rand(40) * (torch.rand(40) < 0.5))
    one = cpu_kernels.augment_wave(audio, *args, rms_floor=_RMS_FLOOR, threads=1)
    four = cpu_kernels.augment_wave(audio, *args, rms_floor=_RMS_FLOOR, threads=4)
    assert torch.equal(one, four)


@built
@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")
@pytest.mark.parametrize("n_fft,n_mels", [(512, 64), (400, 40), (256, 128)])
def test_mel_kernel_equals_the_dense_product(n_fft, n_mels):
    # 128 bands on 129 bins leaves some filters empty: their energies are the offset alone.
    fb = melscale_fbanks(n_fft // 2 + 1, 20.0, 8000.0, n_mels, SR)
    sparse = cpu_kernels.sparse_filterbank(fb)
    assert int(sparse.bands[:, 1].sum()) == int((fb != 0).sum())
    spec = torch.randn(3, 11, fb.shape[0], dtype=torch.complex64)
    expected = power_spectrum(spec) @ fb
    for threads in (1, 3):
        out = cpu_kernels.mel_energies(spec, sparse, offset=0.5, threads=threads)
        assert out.shape == (3, 11, n_mels)
        assert torch.allclose(out, expected + 0.5, rtol=1e-5, atol=1e-5)


@built
def test_frontend_features_agree_between_implementations(monkeypatch):
    # The whole train-mode front end, same seed: kernels and PyTorch ops give the same features.
    from sctrain.audio.frontend import FrontEnd

    frontend = FrontEnd(FeatureConfig(), AugmentConfig(mask_p=0.0), AugmentAssets(torch.randn(2, SR) * 0.1)).train()
    audio = (speech_like(16, seed=1) * 20000).to(torch.int16)
    features = on_both_paths(monkeypatch, lambda: frontend(audio), seed=7)
    assert torch.allclose(features["1"], features["0"], atol=2e-4)


@built
def test_kernels_reject_inconsistent_buffers():
    fb = cpu_kernels.sparse_filterbank(melscale_fbanks(257, 20.0, 8000.0, 64, SR))
    kernels = cpu_kernels._cpu_kernels
    spec = torch.zeros(4, 257, 2)
    with pytest.raises(ValueError, match="out has"):
        kernels.mel_power(spec.numpy(), 257, torch.zeros(4, 63).numpy(), fb.bands.numpy(), fb.weights.numpy(), 0.0, 1)
    bad_bands = fb.bands.clone()
    bad_bands[5, 1] = 400  # runs past the last bin
    with pytest.raises(ValueError, match="band 5"):
        kernels.mel_power(spec.numpy(), 257, torch.zeros(4, 64).numpy(), bad_bands.numpy(), fb.weights.numpy(), 0.0, 1)
    audio = torch.zeros(2, 100, dtype=torch.int16)
    ok = dict(shift=torch.zeros(2), gain=torch.ones(2), bank=torch.zeros(150), noise_mult=torch.ones(2),
              rms_floor=_RMS_FLOOR)
    assert cpu_kernels.augment_wave(audio, noise_start=torch.tensor([0, 50]), **ok).shape == (2, 100)
    with pytest.raises(ValueError, match="row 1's noise window"):
        cpu_kernels.augment_wave(audio, noise_start=torch.tensor([0, 51]), **ok)
    with pytest.raises(ValueError, match="expected int16 or float32"):
        cpu_kernels.augment_wave(audio.double(), noise_start=torch.tensor([0, 0]), **ok)


def test_kernels_stay_out_of_autograd_tracing_and_other_devices(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "1")
    assert cpu_kernels.usable(x) == (cpu_kernels._cpu_kernels is not None)
    assert not cpu_kernels.usable(x.requires_grad_())
    assert not cpu_kernels.usable(torch.zeros(2, 3, device="meta"))
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "0")
    assert not cpu_kernels.usable(torch.zeros(2, 3))


def test_logmel_gradients_and_traces_use_pytorch_ops():
    # A trace through the C kernel would record a constant; the PyTorch path must be taken instead.
    lm = LogMel(FeatureConfig())
    wave = speech_like(2, seed=2)
    traced = torch.jit.trace(lm, wave[:1], check_trace=False)
    assert torch.allclose(traced(wave), lm(wave), atol=1e-4)
    wave.requires_grad_()
    lm(wave).square().sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


def test_cli_says_whether_the_kernels_are_in_use():
    out = subprocess.run([sys.executable, "-m", "sctrain.audio.cpu_kernels"], capture_output=True, text=True,
                         check=True)
    assert ("not built" if cpu_kernels._cpu_kernels is None else "compiled kernels in use") in out.stdout


def test_kernels_are_built_where_required():
    # .ci/run sets SCTRAIN_REQUIRE_CPU_KERNELS=1: there, a failed build of the optional extension is an error.
    if os.environ.get("SCTRAIN_REQUIRE_CPU_KERNELS") != "1":
        pytest.skip("SCTRAIN_REQUIRE_CPU_KERNELS is not set: the kernels are optional here")
    assert cpu_kernels._cpu_kernels is not None, "sctrain.audio._cpu_kernels did not build (see pip's output)"

"""Fast unit tests of the device-side front end: log-mel, masking, waveform augmentation, MixUp."""
from __future__ import annotations

import math

import pytest
import torch
from torchaudio.functional import melscale_fbanks
from torchaudio.transforms import MelSpectrogram

from sctrain.audio.assets import AugmentAssets
from sctrain.audio.augment import WaveAugment, mixup, one_hot_targets
from sctrain.audio.constants import frames_per_clip
from sctrain.audio.features import LOG_OFFSET, LogMel, SpecMask, mel_blocks
from sctrain.audio.frontend import FrontEnd
from sctrain.audio.stages.noise import add_noise
from sctrain.audio.stages.shift import time_shift
from sctrain.config import AugmentConfig, FeatureConfig

SR = 16000
# Every test here runs on both CPU implementations of the front end: the C kernels and the PyTorch ops.
pytestmark = pytest.mark.usefixtures("cpu_implementation")

# Everything off: each test switches on only the augmentation it checks.
QUIET = dict(shift_p=0.0, noise_p=0.0, gain_db=0.0, mask_p=0.0)


def augment_cfg(**kwargs) -> AugmentConfig:
    return AugmentConfig(**{**QUIET, **kwargs})


def tone(batch: int = 4, length: int = SR, seed: int = 0) -> torch.Tensor:
    """Clips of a few random sines plus a little noise, peak ~0.5."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    freqs = 200 + 3000 * torch.rand(batch, 3, 1, generator=g)
    wave = torch.sin(2 * math.pi * freqs * t).sum(1) / 6
    return wave + 0.01 * torch.randn(batch, length, generator=g)


# ----------------------------------------------------------------------------------------------- LogMel

def test_logmel_shape_and_frames():
    cfg = FeatureConfig()
    assert frames_per_clip(cfg.hop_length) == 101
    assert frames_per_clip(128, 8000) == 8000 // 128 + 1
    out = LogMel(cfg)(tone(3))
    assert out.shape == (3, 1, cfg.n_mels, frames_per_clip(cfg.hop_length))
    short = LogMel(FeatureConfig(n_mels=40, hop_length=128))(tone(2, 4000))
    assert short.shape == (2, 1, 40, frames_per_clip(128, 4000))


def test_logmel_per_clip_normalised():
    wave = tone(4) * torch.tensor([1.0, 0.01, 3.0, 0.1])[:, None]  # very different levels
    out = LogMel(FeatureConfig())(wave)
    assert torch.allclose(out.mean(dim=(-2, -1)), torch.zeros(4, 1), atol=1e-4)
    assert torch.allclose(out.std(dim=(-2, -1), unbiased=False), torch.ones(4, 1), atol=1e-3)
    # Level-invariant: a quiet copy of the same clip gives (nearly) the same features.
    assert torch.allclose(out[0], LogMel(FeatureConfig())(wave[0] * 0.5)[0], atol=1e-2)


def test_logmel_silence_is_finite():
    out = LogMel(FeatureConfig())(torch.zeros(2, SR))
    assert torch.isfinite(out).all()


def test_logmel_single_clip():
    lm = LogMel(FeatureConfig())
    wave = tone(2)
    single = lm(wave[1])
    assert single.shape == (1, 1, 64, 101)
    assert torch.allclose(single[0], lm(wave)[1], atol=1e-5)


@pytest.mark.parametrize("n_fft,win_length,n_mels", [(512, 480, 64), (400, 400, 40), (256, 256, 32)])
def test_logmel_matches_torchaudio(n_fft, win_length, n_mels):
    # The fast path (frames-major spectrum, fused power, block mel projection) computes torchaudio's numbers.
    cfg = FeatureConfig(n_fft=n_fft, win_length=win_length, hop_length=160, n_mels=n_mels)
    lm = LogMel(cfg)
    wave = tone(3)
    reference = torch.log(MelSpectrogram(sample_rate=SR, n_fft=n_fft, win_length=win_length, hop_length=160,
                                         f_min=cfg.f_min, f_max=cfg.f_max, n_mels=n_mels)(wave) + LOG_OFFSET)
    assert torch.allclose(lm.power(wave).transpose(1, 2), lm.mel.spectrogram(wave), rtol=1e-4, atol=1e-6)
    mean = reference.mean(dim=(-2, -1), keepdim=True)
    std = reference.std(dim=(-2, -1), unbiased=False, keepdim=True)
    assert torch.allclose(lm(wave)[:, 0], (reference - mean) / std, atol=1e-4)


@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")
@pytest.mark.parametrize("n_fft,n_mels", [(512, 64), (512, 13), (256, 128)])
def test_mel_blocks_cover_the_filterbank(n_fft, n_mels):
    # Every non-zero entry lies in exactly one block, so the block products add up to the dense product;
    # 128 bands on 129 bins leaves some filters empty, which must still give zeros.
    fb = melscale_fbanks(n_fft // 2 + 1, 20.0, 8000.0, n_mels, SR)
    covered = torch.zeros_like(fb, dtype=torch.bool)
    for lo, hi, m_lo, m_hi in mel_blocks(fb):
        covered[lo:hi, m_lo:m_hi] = True
    assert not (fb != 0)[~covered].any()
    power = torch.rand(2, 7, fb.shape[0])
    blocks = torch.cat([power[..., lo:hi] @ fb[lo:hi, a:b] for lo, hi, a, b in mel_blocks(fb)], dim=-1)
    assert torch.allclose(blocks, power @ fb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_logmel_float32_under_autocast(input_dtype):
    lm = LogMel(FeatureConfig())
    wave = tone(2).to(input_dtype)
    reference = lm(wave.float())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = lm(wave)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=1e-4)


# --------------------------------------------------------------------------------------------- SpecMask

def masked_bands(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fully masked rows (mel bands) and columns (frames) of one [F, T] bool mask."""
    return mask.all(dim=1), mask.all(dim=0)


def runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    lengths, current = [], 0
    for f in flags.tolist() + [False]:
        if f:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_specmask_identity_in_eval_and_when_off():
    x = torch.randn(8, 1, 16, 30)
    sm = SpecMask(1.0, 4, 6, 2).eval()
    assert torch.equal(sm(x), x)
    assert torch.equal(SpecMask(0.0, 4, 6, 2).train()(x), x)


def test_specmask_fraction_and_widths():
    torch.manual_seed(0)
    batch, n_freq, n_time, fw, tw = 2000, 32, 50, 8, 10
    x = torch.ones(batch, 1, n_freq, n_time)
    out = SpecMask(0.5, fw, tw, 1).train()(x)
    mask = out[:, 0] == 0
    touched = mask.flatten(1).any(1).float().mean().item()
    # Selected with p=0.5; a selected clip is untouched only if both widths came out 0.
    expected = 0.5 * (1 - 1 / ((fw + 1) * (tw + 1)))
    assert abs(touched - expected) < 0.04
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    for m in mask[:200]:
        rows, cols = masked_bands(m)
        # Every masked element lies in a fully masked band or a fully masked span.
        assert torch.equal(m, rows[:, None] | cols[None, :])
        assert len(runs(rows)) <= 1 and sum(runs(rows)) <= fw
        assert len(runs(cols)) <= 1 and sum(runs(cols)) <= tw


def test_specmask_several_masks_within_bounds():
    torch.manual_seed(1)
    x = torch.ones(300, 1, 20, 40)
    out = SpecMask(1.0, 5, 7, 3).train()(x)
    for m in out[:, 0] == 0:
        rows, cols = masked_bands(m)
        assert rows.sum() <= 3 * 5 and cols.sum() <= 3 * 7
        assert all(r <= 3 * 5 for r in runs(rows))
    # Widths reach their maximum somewhere (the range is inclusive).
    assert max(sum(runs(masked_bands(m)[1])) for m in out[:, 0] == 0) >= 7


# ---------------------------------------------------------------------------------------- WaveAugment

def test_wave_augment_identity_in_eval():
    aug = WaveAugment(AugmentConfig(shift_p=1, noise_p=1), AugmentAssets(torch.randn(2, SR))).eval()
    wave = tone(3)
    assert torch.equal(aug(wave), wave)


def test_time_shift_exact():
    wave = torch.zeros(2, 1000)
    wave[:, 500] = 1.0
    out = time_shift(wave, torch.tensor([100, -300]))
    assert out[0].nonzero().flatten().tolist() == [600]
    assert out[1].nonzero().flatten().tolist() == [200]
    ones = time_shift(torch.ones(2, 1000), torch.tensor([250, -40]))
    assert ones[0, :250].eq(0).all() and ones[0, 250:].eq(1).all()  # zero-filled, not circular
    assert ones[1, -40:].eq(0).all() and ones[1, :-40].eq(1).all()


def test_wave_augment_shift_moves_click_within_range():
    torch.manual_seed(0)
    max_ms, length, at = 5.0, 2000, 1000
    max_samples = int(max_ms * SR / 1000)
    aug = WaveAugment(augment_cfg(shift_p=1.0, shift_max_ms=max_ms), AugmentAssets(torch.zeros(0, SR))).train()
    wave = torch.zeros(64, length)
    wave[:, at] = 1.0
    out = aug(wave)
    moves = []
    for row in out:
        where = row.nonzero().flatten()
        assert len(where) == 1 and row[where].item() == 1.0
        moves.append(where.item() - at)
    assert all(abs(m) <= max_samples for m in moves)
    assert len(set(moves)) > 10 and min(moves) < 0 < max(moves)


def test_wave_augment_shift_probability():
    torch.manual_seed(0)
    aug = WaveAugment(augment_cfg(shift_p=0.3, shift_max_ms=50), AugmentAssets(torch.zeros(0, SR))).train()
    wave = torch.zeros(2000, 4000)
    wave[:, 2000] = 1.0
    moved = (aug(wave)[:, 2000] != 1.0).float().mean().item()
    assert abs(moved - 0.3) < 0.04


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
@pytest.mark.parametrize("background_p", [0.0, 1.0])
def test_wave_augment_noise_snr(snr_db, background_p):
    torch.manual_seed(0)
    background = torch.randn(3, SR) * torch.tensor([0.01, 0.3, 1.0])[:, None]
    cfg = augment_cfg(noise_p=1.0, snr_db_min=snr_db, snr_db_max=snr_db, background_p=background_p)
    aug = WaveAugment(cfg, AugmentAssets(background)).train()
    wave = tone(8) * torch.linspace(0.05, 1.0, 8)[:, None]
    noise = aug(wave) - wave
    measured = 10 * torch.log10(wave.square().mean(1) / noise.square().mean(1))
    assert torch.allclose(measured, torch.full_like(measured, snr_db), atol=0.5)


def best_window_correlation(noise: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Per noise row: the highest normalised correlation with any circular window of any background row."""
    length, rec_len = noise.shape[-1], background.shape[-1]
    padded = torch.nn.functional.pad(noise, (0, rec_len - length))
    # corr[b, m, k] = sum_t background[m, (k + t) % L] * noise[b, t], all offsets k at once.
    corr = torch.fft.irfft(torch.fft.rfft(background)[None] * torch.fft.rfft(padded)[:, None].conj(), n=rec_len)
    best = []
    for b in range(noise.shape[0]):
        m, k = divmod(corr[b].argmax().item(), rec_len)
        window = background[m, (k + torch.arange(length)) % rec_len]
        best.append(corr[b, m, k] / (noise[b].norm() * window.norm()))
    return torch.stack(best)


def test_wave_augment_uses_background():
    torch.manual_seed(0)
    background = torch.randn(2, SR)
    wave = tone(6, 3000)
    cfg = augment_cfg(noise_p=1.0, snr_db_min=10, snr_db_max=10, background_p=1.0)
    noise = WaveAugment(cfg, AugmentAssets(background)).train()(wave) - wave
    assert (best_window_correlation(noise, background) > 0.999).all()
    cfg = augment_cfg(noise_p=1.0, snr_db_min=10, snr_db_max=10, background_p=0.0)
    white = WaveAugment(cfg, AugmentAssets(background)).train()(wave) - wave
    assert (best_window_correlation(white, background) < 0.2).all()


def test_wave_augment_background_wraps_around():
    # Clips longer than the recording still get noise throughout (circular window).
    torch.manual_seed(0)
    cfg = augment_cfg(noise_p=1.0, snr_db_min=0, snr_db_max=0, background_p=1.0)
    aug = WaveAugment(cfg, AugmentAssets(torch.ones(1, 100))).train()
    wave = tone(2, 1000)
    noise = aug(wave) - wave
    assert torch.allclose(noise, noise[:, :1].expand_as(noise), atol=1e-6)
    assert (noise.abs() > 0).all()


def test_wave_augment_no_background_and_silent_clips():
    torch.manual_seed(0)
    cfg = augment_cfg(noise_p=1.0, background_p=1.0, shift_p=1.0, gain_db=6.0)
    aug = WaveAugment(cfg, AugmentAssets(torch.zeros(0, SR))).train()
    wave = tone(4)
    wave[0] = 0.0  # a silent clip must not produce NaN
    out = aug(wave)
    assert out.shape == wave.shape and torch.isfinite(out).all()
    assert out[0].abs().max() < 1e-4
    assert not torch.equal(out[1:], wave[1:])


def test_wave_augment_gain_bounds():
    torch.manual_seed(0)
    gain_db = 6.0
    aug = WaveAugment(augment_cfg(gain_db=gain_db), AugmentAssets(torch.zeros(0, SR))).train()
    wave = tone(500, 200) + 0.1
    ratio = aug(wave) / wave
    per_clip = ratio[:, 0]
    assert torch.allclose(ratio, per_clip[:, None].expand_as(ratio), rtol=1e-5)  # one gain per clip
    db = 20 * torch.log10(per_clip)
    assert db.min() >= -gain_db - 1e-4 and db.max() <= gain_db + 1e-4
    assert db.min() < -gain_db + 0.5 and db.max() > gain_db - 0.5


def test_wave_augment_int16_input_equals_scaled_float():
    # int16 clips are converted in the gain's pass: the same draws give the float path's result.
    cfg = augment_cfg(noise_p=0.7, shift_p=0.8, gain_db=6.0, background_p=0.5)
    aug = WaveAugment(cfg, AugmentAssets(torch.randn(2, 3 * SR))).train()
    audio = (tone(6) * 20000).to(torch.int16)
    torch.manual_seed(3)
    from_int = aug(audio)
    torch.manual_seed(3)
    from_float = aug(audio.float() / 32768)
    assert from_int.dtype == torch.float32 and torch.allclose(from_int, from_float, atol=1e-6)


def test_noise_rms_from_the_energy_table_is_exact():
    # The running sum of squares gives each window's RMS without a pass over it, wrapped windows included.
    torch.manual_seed(0)
    aug = WaveAugment(augment_cfg(noise_p=1.0, background_p=0.5), AugmentAssets(torch.randn(3, SR // 2) * 0.3)).train()
    draw = aug.draw(64, SR, torch.device("cpu"))["noise"]
    bank, _ = aug.stage("noise").bank(SR)
    noise = bank.unfold(1, SR, 1)[draw.row, draw.offset]
    assert torch.allclose(aug.stage("noise").window_rms(draw, SR), noise.square().mean(dim=1).sqrt(), rtol=1e-4)


def test_add_noise_guards_silence():
    out = add_noise(torch.zeros(2, 100), torch.zeros(2, 100), torch.tensor([5.0, 5.0]))
    assert torch.equal(out, torch.zeros(2, 100))


def test_background_buffer_not_in_state_dict():
    aug = WaveAugment(AugmentConfig(), AugmentAssets(torch.randn(2, SR)))
    assert not any(name.endswith(("noise", "rirs", "white")) for name in aug.state_dict())
    assert "assets.noise" in dict(aug.named_buffers())


# ------------------------------------------------------------------------------------------------ MixUp

def test_mixup_soft_targets_and_rows():
    torch.manual_seed(0)
    batch, classes = 16, 5
    x = torch.eye(batch)  # row i is e_i, so each mixed row shows its own weight and its partner
    y = torch.arange(batch) % classes
    mixed, soft = mixup(x, y, classes, alpha=0.4)
    assert soft.shape == (batch, classes)
    assert torch.allclose(soft.sum(1), torch.ones(batch))
    moved = [i for i in range(batch) if mixed[i, i] < 1 - 1e-6]
    assert moved, "the permutation moved no row"
    lam = mixed[moved[0], moved[0]].item()
    partners = []
    for i in range(batch):
        others = [j for j in mixed[i].nonzero().flatten().tolist() if j != i]
        j = others[0] if others else i
        assert len(others) <= 1
        partners.append(j)
        assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)  # one lam per batch
        expected = lam * one_hot_targets(y, classes)[i] + (1 - lam) * one_hot_targets(y, classes)[j]
        assert torch.allclose(soft[i], expected, atol=1e-6)
    assert sorted(partners) == list(range(batch))  # partners form a permutation


def test_mixup_probability_leaves_unmixed_batches_exactly_as_they_were():
    """``p``: the coin is a device tensor (no host read, one graph); a batch it skips is bitwise unchanged
    with one-hot targets, and over many batches about ``p`` of them are mixed."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 10), torch.arange(8) % 3
    mixed_batches = 0
    for _ in range(200):
        out, soft = mixup(x, y, 3, alpha=0.4, p=0.25)
        if torch.equal(out, x):
            assert torch.equal(soft, one_hot_targets(y, 3))
        else:
            mixed_batches += 1
    assert 30 <= mixed_batches <= 70


def test_mixup_rejects_int_and_accepts_soft_targets():
    with pytest.raises(TypeError):
        mixup(torch.zeros(4, 10, dtype=torch.int16), torch.zeros(4, dtype=torch.long), 3, 0.2)
    soft = torch.softmax(torch.randn(4, 3), 1)
    _, out = mixup(torch.randn(4, 10), soft, 3, 0.2)
    assert torch.allclose(out.sum(1), torch.ones(4))


# --------------------------------------------------------------------------------------------- FrontEnd

def test_frontend_int16_matches_float_in_eval():
    fe = FrontEnd(FeatureConfig(), AugmentConfig(), AugmentAssets(torch.randn(2, SR))).eval()
    audio = (tone(3) * 20000).round().to(torch.int16)
    out = fe(audio)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 64, 101)
    assert torch.allclose(out, LogMel(FeatureConfig())(audio.float() / 32768), atol=1e-5)
    assert torch.allclose(out, fe(audio.float() / 32768), atol=1e-6)


def test_frontend_train_augments_and_is_seeded():
    fe = FrontEnd(FeatureConfig(), AugmentConfig(shift_p=1, noise_p=1, mask_p=1), AugmentAssets(torch.randn(2, SR)))
    audio = (tone(4) * 20000).round().to(torch.int16)
    clean = fe.eval()(audio)
    fe.train()
    torch.manual_seed(123)
    a = fe(audio)
    torch.manual_seed(123)
    b = fe(audio)
    assert torch.equal(a, b)
    assert not torch.allclose(a, clean, atol=1e-2)
    assert a.shape == clean.shape and torch.isfinite(a).all()

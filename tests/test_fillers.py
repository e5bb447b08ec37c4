"""Filler synthesis (sctrain/audio/fillers.py) and the generated negative audio's sections: reversed keyword clips
as _unknown_, coloured noise as _silence_, checked against numpy estimates made here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sctrain.audio.fillers import FillerSynthesis, coloured_bank
from sctrain.config import AugmentConfig, ConfigError
from sctrain.streameval.generated import negative_audio

LABELS = ["yes", "no", "_unknown_", "_silence_"]
YES, NO, UNKNOWN, SILENCE = range(4)


def spectral_slope(x: np.ndarray, rate: int = 16000) -> float:
    """The exponent e of a 1 / f^e power spectrum, by a least-squares line through the log-log periodogram
    averaged in octave-wide bins (50 Hz to 4 kHz)."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freq = np.fft.rfftfreq(len(x), 1 / rate)
    edges = 50 * 2.0 ** np.arange(0, 7.5, 0.5)
    centres, levels = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (freq >= lo) & (freq < hi)
        centres.append(np.log(np.sqrt(lo * hi)))
        levels.append(np.log(power[band].mean()))
    return -np.polyfit(centres, levels, 1)[0]


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_bank_has_the_asked_spectrum_at_unit_rms(exponent):
    torch.manual_seed(0)
    bank = coloured_bank(2, 64000, torch.tensor([exponent, exponent])).numpy()
    for row in bank:
        assert np.sqrt(np.mean(row.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
        assert spectral_slope(row) == pytest.approx(exponent, abs=0.15)


def _batch(labels: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = (torch.randn(len(labels), 16000, generator=g) * 3000).round().clamp(-32768, 32767).to(torch.int16)
    return audio, torch.tensor(labels)


def test_reversed_unknown_rows_are_a_keyword_clip_played_backwards():
    # One keyword clip in 30 rows: every _unknown_ row that changes holds that clip reversed, alone or over
    # itself (the second talker), so row / reversed clip is one constant in [1, 2].
    audio, target = _batch([YES] * 30 + [UNKNOWN] * 40 + [SILENCE] * 3)
    audio[1:30] = audio[0]
    fillers = FillerSynthesis(AugmentConfig(reversed_unknown_p=1.0), LABELS)
    torch.manual_seed(1)
    wave, out_target = fillers(audio, target)
    assert wave.dtype == torch.float32 and torch.equal(out_target, target)
    original = audio.float() / 32768
    reversed_keyword = original[0].flip(-1)
    changed = [i for i in range(len(target)) if not torch.equal(wave[i], original[i])]
    assert changed and all(target[i] == UNKNOWN for i in changed)  # the keyword and _silence_ rows are as they were
    assert torch.equal(wave[:30], original[:30])
    ratios = [float((wave[i] / reversed_keyword).median()) for i in changed]
    for i, ratio in zip(changed, ratios):
        assert 1.0 <= ratio <= 2.0
        assert torch.allclose(wave[i], reversed_keyword * ratio, atol=1e-5)
    assert any(r == pytest.approx(1.0) for r in ratios) and any(r > 1.2 for r in ratios)  # both kinds occur


def test_generated_silence_rows_are_coloured_noise_at_the_configured_levels():
    audio, target = _batch([YES, NO] + [SILENCE] * 200)
    cfg = AugmentConfig(generated_silence_p=0.5, generated_silence_dbfs_min=-60, generated_silence_dbfs_max=-20)
    fillers = FillerSynthesis(cfg, LABELS)
    torch.manual_seed(2)
    wave, _ = fillers(audio, target)
    original = audio.float() / 32768
    assert torch.equal(wave[:2], original[:2])
    changed = [i for i in range(2, len(target)) if not torch.equal(wave[i], original[i])]
    assert 70 <= len(changed) <= 130  # half of 200
    dbfs = [20 * np.log10(np.sqrt(np.mean(wave[i].double().numpy() ** 2))) for i in changed]
    # A 1 s window of a unit-RMS 4 s row: brown noise's window RMS wanders by a few dB around the row's.
    assert -66 <= min(dbfs) and max(dbfs) <= -14 and np.ptp(dbfs) > 25
    slopes = [spectral_slope(wave[i].double().numpy()) for i in changed]
    assert min(slopes) < 0.4 and max(slopes) > 1.6  # white to brown


def test_off_in_eval_mode_or_without_the_class_and_draws_nothing():
    audio, target = _batch([YES, NO, UNKNOWN, SILENCE])
    cfg = AugmentConfig(reversed_unknown_p=1.0, generated_silence_p=1.0)
    fillers = FillerSynthesis(cfg, LABELS).eval()
    state = torch.get_rng_state()
    wave, out = fillers(audio, target)
    assert wave is audio and out is target and torch.equal(torch.get_rng_state(), state)
    no_fillers = FillerSynthesis(cfg, ["yes", "no"])  # neither _unknown_ nor _silence_ in the labels
    assert not no_fillers.active() and no_fillers.bank.shape[0] == 0
    wave, _ = no_fillers(audio[:2], target[:2])
    assert wave is audio[:2] or torch.equal(wave, audio[:2])
    assert not FillerSynthesis.enabled(AugmentConfig())


def test_config_checks_name_the_key():
    with pytest.raises(ConfigError, match="augment.reversed_unknown_p"):
        AugmentConfig(reversed_unknown_p=1.5)
    with pytest.raises(ConfigError, match="augment.generated_silence_dbfs_min"):
        AugmentConfig(generated_silence_dbfs_min=-10, generated_silence_dbfs_max=-20)


def test_negative_audio_sections_cover_it_and_tell_noise_from_talk():
    rng = np.random.default_rng(0)
    recording = rng.standard_normal(16000 * 5).astype(np.float32) * 0.1
    clips = [(rng.standard_normal(16000) * 3000).astype(np.int16) for _ in range(5)]
    wave, sections = negative_audio(300.0, [recording], clips, seed=3)
    again, same = negative_audio(300.0, [recording], clips, seed=3)
    assert np.array_equal(wave, again) and sections == same
    assert len(wave) == 300 * 16000 and sections[0][1] == 0.0 and sections[-1][2] == pytest.approx(300.0)
    assert all(a[2] == pytest.approx(b[1]) and a[0] != b[0] for a, b in zip(sections, sections[1:]))
    hours = {name: sum(e - s for n, s, e in sections if n == name) for name in ("noise", "unknown")}
    assert set(n for n, _, _ in sections) == {"noise", "unknown"} and min(hours.values()) > 30
    only_noise = negative_audio(60.0, [recording], seed=1)[1]
    assert only_noise == [("noise", 0.0, pytest.approx(60.0))]


def _tone_word(freq: float, start_s: float, end_s: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(rate) / rate
    inside = (t >= start_s) & (t < end_s)
    envelope = np.where(inside, np.sin(np.pi * (t - start_s) / (end_s - start_s)) ** 2, 0.0)  # no energy ties
    return (0.3 * np.sin(2 * np.pi * freq * t) * envelope).astype(np.float32)


def _numpy_extent(x: np.ndarray, frame: int = 160) -> tuple[int, int]:
    energy = (x[: len(x) // frame * frame].astype(np.float64) ** 2).reshape(-1, frame).sum(1)
    share = np.cumsum(energy) / energy.sum()
    return int(np.searchsorted(share, 0.1, side="left")) * frame, int(np.searchsorted(share, 0.9) + 1) * frame


def test_spliced_unknown_rows_join_the_start_of_one_word_to_the_end_of_another():
    # "yes" rows: a 300 Hz word at 0.30-0.70 s; "no" rows: a 1 kHz word at 0.20-0.80 s. A splice is the head
    # word's own samples up to the cut, then the tail word's from the same share of its extent on.
    yes, no = _tone_word(300, 0.30, 0.70), _tone_word(1000, 0.20, 0.80)
    target = torch.tensor([YES] * 60 + [NO] * 60 + [UNKNOWN] * 30)
    audio = torch.from_numpy(np.stack([yes] * 60 + [no] * 60 + [np.zeros(16000, np.float32)] * 30))
    fillers = FillerSynthesis(AugmentConfig(spliced_unknown_p=1.0), LABELS)
    torch.manual_seed(4)
    wave, out_target = fillers(audio, target)
    assert torch.equal(out_target, target) and torch.equal(wave[:120], audio[:120])
    changed = [i for i in range(120, 150) if wave[i].abs().max() > 0]
    assert len(changed) >= 4  # a row draws two keyword rows of different words about a third of the time
    (ys, ye), (ns, ne) = _numpy_extent(yes), _numpy_extent(no)
    heads = {"yes": 0, "no": 0}
    for i in changed:
        x = wave[i].numpy()
        spectrum = np.abs(np.fft.rfft(x))
        low, high = spectrum[300], spectrum[1000]  # 1 Hz bins
        assert low > 0.05 * spectrum.max() and high > 0.05 * spectrum.max()  # both words are in it
        loud = np.flatnonzero(np.abs(x) > 1e-3)
        first = x[loud[0]: loud[0] + 400]
        head = "yes" if np.abs(np.fft.rfft(first, 16000))[300] > np.abs(np.fft.rfft(first, 16000))[1000] else "no"
        heads[head] += 1
        hs, he = (ys, ye) if head == "yes" else (ns, ne)
        ts, te = (ns, ne) if head == "yes" else (ys, ye)
        source = yes if head == "yes" else no
        other = no if head == "yes" else yes
        # The cut: where the head word's own samples stop matching.
        differs = np.flatnonzero(np.abs(x - source) > 1e-6)
        cut = differs[0] + 80  # the fade starts half its length (80 samples) before the cut
        share = (cut - hs) / (he - hs)
        assert 0.28 <= share <= 0.72
        # After the fade: the tail word's samples from the same share of its extent on (the integer cuts are
        # recovered here to a few samples, so the offset is searched near the expected one).
        expected = int(round(ts + share * (te - ts) - cut))
        after = np.arange(cut + 80, 15000)
        assert any(np.allclose(x[after], np.pad(other, (0, 400))[after + d], atol=1e-5)
                   for d in range(expected - 4, expected + 5) if after[0] + d >= 0)
    assert heads["yes"] and heads["no"]

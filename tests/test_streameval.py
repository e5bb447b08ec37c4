"""Stream evaluation: streams with known words, exact scoring, DET curves, calibration, the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from support import REPO, SHARED

from sctrain.artifacts.best import load_best
from sctrain.artifacts.detector import DetectorRules
from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.io import read_audio
from sctrain.cli.streameval import main
from sctrain.config import DataConfig
from sctrain.data.pack import load_dataset
from sctrain.data.speechcommands import KEYWORDS
from sctrain.data.synthetic import write_synthetic_dataset
from sctrain.inference.events import Detection, EventDecoder
from sctrain.streameval import build_stream, calibrate, det_curve, evaluate, score_events
from sctrain.streameval.bounds import hours_needed, rate_upper_bound
from sctrain.streameval.data import noise_recordings, split_clips
from sctrain.streameval.mixed_stream import Stream, Word
from sctrain.streameval.posteriors import window_count
from sctrain.streameval.report import write_report

LABELS = ["yes", "no", "up", "_unknown_", "_silence_"]
HOP = SAMPLE_RATE // 10


def tone_clips(labels=("yes", "no", "up"), per_label=3) -> list[tuple[np.ndarray, str]]:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    return [((np.sin(2 * np.pi * (300 + 200 * i + 20 * k) * t) * 8000).astype(np.int16), lab)
            for i, lab in enumerate(labels) for k in range(per_label)]


def small_stream(seed=0, noise=True) -> Stream:
    rng = np.random.default_rng(9)
    noises = [(rng.standard_normal(5 * SAMPLE_RATE) * 0.3).astype(np.float32)] if noise else []
    others = [(c, "bed") for c, _ in tone_clips(("a",), 2)]
    return build_stream(tone_clips(), noises, 60, noise_s=20, unknown=others, unknown_s=15, seed=seed)


def grid_stream(words: int = 20, noise_s: float = 20.0) -> Stream:
    """Keywords exactly 3 s apart (peaks never interact), then noise alone: for exact expectations."""
    labels = ("yes", "no", "up")
    return Stream(np.zeros(int((3 * words + noise_s) * SAMPLE_RATE), np.float32),
                  [Word(labels[k % 3], 1.0 + 3 * k) for k in range(words)],
                  [("keywords", 0.0, 3.0 * words), ("noise", 3.0 * words, 3.0 * words + noise_s)])


def fake_posteriors(stream: Stream, peaks: list[tuple[float, str, float]]) -> np.ndarray:
    """A posterior source that knows the answer: _silence_ everywhere except 5-window plateaus of ``height``
    centred on the window that starts nearest each ``(time, label)``."""
    p = np.zeros((window_count(len(stream.wave), HOP), len(LABELS)), np.float32)
    p[:, LABELS.index("_silence_")] = 1.0
    for t, label, height in peaks:
        i = round(t * SAMPLE_RATE / HOP)
        rows = slice(max(0, i - 2), i + 3)
        p[rows] = (1 - height) / (len(LABELS) - 1)
        p[rows, LABELS.index(label)] = height
    return p


# ------------------------------------------------------------------------------------------ streams

def test_stream_follows_the_protocol():
    stream = small_stream()
    assert stream.duration_s == 95.0 and len(stream.wave) == 95 * SAMPLE_RATE
    assert stream.sections == [("keywords", 0.0, 60.0), ("noise", 60.0, 80.0), ("unknown", 80.0, 95.0)]
    keywords = [w for w in stream.truth if w.label != "_unknown_"]
    unknown = [w for w in stream.truth if w.label == "_unknown_"]
    assert len(keywords) == 20 and len(unknown) == 5  # one word per 3 s stride
    for k, w in enumerate(keywords):  # stride k starts at 3k s; the word at a random point of its 2 s gap
        assert 3 * k <= w.start_s < 3 * k + 2
    assert all(80 <= w.start_s < 94 for w in unknown)
    assert {w.label for w in keywords} == {"yes", "no", "up"}
    # Without noise the words are all there is: each clip lies where the truth says, ramps and all.
    quiet = small_stream(noise=False)
    words = ["yes", "no", "up"]
    for w in quiet.truth[:5]:
        i = round(w.start_s * SAMPLE_RATE)
        assert quiet.wave[i] == 0.0  # the envelope starts at zero
        segment = quiet.wave[i + 600: i + 15000]
        assert np.abs(segment).max() > 0.2
        if w.label in words:  # the clip's tone: 300 Hz + 200 Hz per word (+ 20 Hz per clip)
            peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * SAMPLE_RATE / len(segment)
            assert abs(peak_hz - 300 - 200 * words.index(w.label)) < 60
    silent = np.ones(len(quiet.wave), bool)
    for w in quiet.truth:
        i = round(w.start_s * SAMPLE_RATE)
        silent[i: i + SAMPLE_RATE] = False
    assert not quiet.wave[silent].any()
    # Seeded: the same stream again, another one for another seed.
    again = small_stream()
    assert np.array_equal(again.wave, stream.wave) and again.truth == stream.truth
    assert small_stream(seed=1).truth != stream.truth
    with pytest.raises(ValueError, match="holds no word"):
        build_stream(tone_clips(), [], 2.5)
    with pytest.raises(ValueError, match="no non-keyword clips"):
        build_stream(tone_clips(), [], 10, unknown_s=5)


def test_clips_and_noise_of_a_packed_split(tmp_path):
    """A kws12 task with words beyond the ten keywords: the stream gets a stretch of _unknown_ words."""
    root = write_synthetic_dataset(tmp_path / "sc", words=12, per_word=10, seed=1)
    data = load_dataset(DataConfig(root=str(root), task="kws12", cache_dir=str(tmp_path / "cache"), download=False,
                                   pack_workers=1), progress=False)
    keywords, unknown = split_clips(data, "test")
    assert keywords and unknown and all(a.dtype == np.int16 and len(a) == SAMPLE_RATE for a, _ in keywords)
    assert {lab for _, lab in keywords} <= set(KEYWORDS) and {lab for _, lab in unknown} == {"_unknown_"}
    paths = [root / p for p in data.meta["background_files"]]
    whole = [read_audio(p) for p in paths]
    test_noise, val_noise = noise_recordings(paths, "test"), noise_recordings(paths, "validation")
    for rec, t, v in zip(whole, test_noise, val_noise):  # the last and the second-last tenth of each
        assert np.array_equal(t, rec[int(0.9 * len(rec)):])
        assert np.array_equal(v, rec[int(0.8 * len(rec)): int(0.9 * len(rec))])
    stream = build_stream(keywords, test_noise, 30, 6, unknown, 12, seed=0)
    assert [w.label for w in stream.truth if w.start_s >= 36] == ["_unknown_"] * 4


# ------------------------------------------------------------------------------------------ scoring

def test_scoring_is_exact_on_known_events():
    stream = Stream(np.zeros(40 * SAMPLE_RATE, np.float32),
                    [Word("yes", 1.0), Word("no", 4.0), Word("up", 7.0), Word("yes", 10.0), Word("no", 13.0),
                     Word("up", 16.0), Word("_unknown_", 33.0)],
                    [("keywords", 0.0, 20.0), ("noise", 20.0, 30.0), ("unknown", 30.0, 40.0)])
    events = [Detection("yes", 1.3, 0.9),  # the word the earlier event took: wrong, as the reference counts it
              Detection("yes", 0.5, 0.8),  # hit (events are matched in time order)
              Detection("up", 4.75, 0.7),  # within 0.75 s of "no": wrong label
              Detection("up", 7.76, 0.9),  # just outside the tolerance: false alarm between keywords
              Detection("yes", 9.25, 0.9),  # hit, at the tolerance's edge
              Detection("up", 16.0, 0.9),  # hit
              Detection("no", 25.0, 0.9),  # false alarm on noise alone
              Detection("go", 33.2, 0.9),  # on a non-keyword word: false alarm there
              Detection("go", 36.0, 0.9)]  # false alarm on non-keyword speech
    score = score_events(events, stream)
    assert [o for _, o in sorted(score.outcomes, key=lambda x: x[0].start_s)] == [
        "hit", "wrong", "wrong", "false_alarm:keywords", "hit", "hit", "false_alarm:noise",
        "false_alarm:unknown", "false_alarm:unknown"]
    d = score.to_dict(["yes", "no", "up", "go"])
    assert (d["keywords_said"], d["hits"], d["wrong_labels"], d["misses"], d["false_alarms"]) == (6, 3, 2, 2, 4)
    assert score.wrong == {"no": 1} and score.misses == {"up": 1, "no": 1}  # "no" at 4 s only got "up"
    hours = {"keywords": 20 / 3600, "noise": 10 / 3600, "unknown": 10 / 3600}
    assert d["fa_per_hour_by_section"] == {k: round(n / hours[k], 4) for k, n in
                                          {"keywords": 1, "noise": 1, "unknown": 2}.items()}
    assert d["fa_per_hour"] == round(4 / (40 / 3600), 4) and d["miss_rate"] == 0.5
    assert d["per_keyword"]["yes"] == {"said": 2, "hits": 2, "wrong": 0, "misses": 0, "false_alarms": 0,
                                       "miss_rate": 0.0, "fa_per_hour": 0.0}
    assert d["per_keyword"]["go"]["false_alarms"] == 2 and d["per_keyword"]["go"]["said"] == 0
    assert d["per_keyword"]["up"]["miss_rate"] == 0.5
    # Pooling two streams adds counts and hours.
    both = score + score
    assert both.fa_per_hour() == score.fa_per_hour() and sum(both.hits.values()) == 6


def test_an_event_takes_the_first_word_in_reach():
    """Two words within the tolerance of one event: the reference matches the earlier one."""
    stream = Stream(np.zeros(10 * SAMPLE_RATE, np.float32), [Word("yes", 2.0), Word("no", 3.0)],
                    [("keywords", 0.0, 10.0)])
    score = score_events([Detection("no", 2.5, 0.9)], stream)
    assert score.outcomes[0][1] == "wrong" and score.misses == {"no": 1} and score.wrong == {"yes": 1}


def test_end_to_end_with_peaks_on_the_truth():
    stream = small_stream()
    keywords = [w for w in stream.truth if w.label != "_unknown_"]
    # Every word gets its peak (the _unknown_ ones on the _unknown_ label, which never fires), plus four
    # spurious ones: two between keywords (amid the widest gaps), one on noise, one on non-keyword speech.
    gaps = sorted(range(len(keywords) - 1), key=lambda k: keywords[k].start_s - keywords[k + 1].start_s)[:2]
    spurious = [((keywords[k].start_s + keywords[k + 1].start_s) / 2, lab) for k, lab in zip(gaps, ("up", "no"))]
    spurious += [(70.0, "yes"), (93.5, "up")]
    peaks = [(w.start_s, w.label, 0.9) for w in stream.truth] + [(t, lab, 0.78) for t, lab in spurious]
    post = fake_posteriors(stream, peaks)
    # TF's streams put words as little as 1 s apart; a 0.5 s wait and refractory period keep every word's
    # peak its own (the defaults may report a word that follows another closely 0.1 s late).
    decoder = EventDecoder(LABELS, refractory_s=0.5, peak_wait_s=0.5)
    score = score_events(decoder.decode(post), stream)
    assert sum(score.hits.values()) == len(keywords) == sum(score.truths.values()) == 20
    assert score.wrong_events == 0 and not score.misses and not score.wrong
    assert {s: score.fa_count(s) for s in ("keywords", "noise", "unknown")} == {"keywords": 2, "noise": 1, "unknown": 1}
    assert score.fa_per_hour("noise") == 1 / (20 / 3600)
    on_grid = {round(w.start_s * SAMPLE_RATE / HOP) * HOP / SAMPLE_RATE for w in keywords}
    assert {e.start_s for e, outcome in score.outcomes if outcome == "hit"} == on_grid  # each at its own peak
    # The whole evaluation on the cached posteriors: the decoder's thresholds, the curve, calibration.
    result = evaluate(decoder, [(post, stream)], [(post, stream)], target_fa_per_hour=0.0)
    assert result.default.to_dict() == score.to_dict()
    # 20 s cannot bound a rate to 0, so calibration falls back on "nothing fires" (never the grid floor), and takes
    # the highest such threshold that still finds every word (the 0.9 peaks): margin that costs no miss.
    assert result.calibration.thresholds == {"yes": 0.85, "no": 0.85, "up": 0.85}
    assert result.calibrated.fa_count() == 0 and result.calibrated.miss_rate() == 0.0
    assert not any(result.calibration.met.values())  # and says the claim is not shown


def test_det_curve_is_monotone_and_exact():
    stream = grid_stream()
    keywords = stream.truth
    heights = [0.3 + 0.6 * k / (len(keywords) - 1) for k in range(len(keywords))]  # 0.3 ... 0.9
    fa_heights = [0.42, 0.62, 0.82]
    peaks = [(w.start_s, w.label, h) for w, h in zip(keywords, heights)]
    peaks += [(62.0 + 5 * k, "yes", h) for k, h in enumerate(fa_heights)]  # on noise alone
    post = fake_posteriors(stream, peaks)
    grid = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]
    points = det_curve(EventDecoder(LABELS), [(post, stream)], grid)
    assert [p.threshold for p in points] == grid
    hours = stream.duration_s / 3600
    for p in points:  # isolated peaks: a word is found, a false alarm fires, exactly when its peak reaches t
        assert p.miss_rate == pytest.approx(sum(h < p.threshold for h in heights) / len(heights))
        assert p.fa_per_hour == pytest.approx(sum(h >= p.threshold for h in fa_heights) / hours)
    assert all(a.fa_per_hour >= b.fa_per_hour and a.miss_rate <= b.miss_rate for a, b in zip(points, points[1:]))
    assert points[0].per_keyword["yes"][1] == pytest.approx(3 / hours)


def test_calibration_bounds_the_rate_and_fails_safe():
    stream = grid_stream()
    # Word peaks at five heights, so each step up the grid misses more words; spurious peaks on noise alone:
    # "no" at 0.55 and 0.75, "up" at 0.65.
    heights = (0.45, 0.65, 0.75, 0.85, 0.95)
    words = [(w.start_s, w.label, heights[k % len(heights)]) for k, w in enumerate(stream.truth)]
    spurious = [(62.0, "no", 0.55), (67.0, "no", 0.75), (72.0, "up", 0.65)]
    post = fake_posteriors(stream, words + spurious)
    decoder, hours = EventDecoder(LABELS), stream.duration_s / 3600
    grid = [0.05, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0]
    # 80 s bound no rate to 1/h: calibration falls back on "nothing fires", says the target is not shown, and
    # within that takes the lowest threshold, as every step up misses words: "no" over 0.75, "up" over 0.65.
    c = calibrate(decoder, [(post, stream)], 1.0, grid=grid, miss_slack=0.0)
    assert c.thresholds == {"yes": 0.4, "no": 0.8, "up": 0.7} and not any(c.met.values())
    assert c.validation.fa_count() == 0 and c.bounds["no"] == pytest.approx(rate_upper_bound(0, hours))
    # A target that one false alarm per keyword meets (by its 95 % bound, not its count): one "no" may stay.
    target = rate_upper_bound(1, hours) * 1.001
    c = calibrate(decoder, [(post, stream)], target, grid=grid, miss_slack=0.0)
    assert c.thresholds == {"yes": 0.4, "no": 0.6, "up": 0.4} and all(c.met.values())
    assert all(c.validation.fa_count(label=k) <= 1 for k in c.thresholds)
    # A target nothing on the grid meets: the top of the grid, flagged.
    always = fake_posteriors(stream, [(62.0, "yes", 1.0)])
    c = calibrate(decoder, [(always, stream)], 0.0, grid=[0.5, 1.0])
    assert c.thresholds["yes"] == 1.0 and not c.met["yes"]


def test_rate_bounds_match_the_poisson_tables():
    # Garwood's exact 95 % upper limits (one-sided) for 0, 1, 2 and 10 events: 2.996, 4.744, 6.296, 16.962.
    for count, limit in ((0, 2.9957), (1, 4.7439), (2, 6.2958), (10, 16.9622)):
        assert rate_upper_bound(count, 1.0) == pytest.approx(limit, abs=2e-4)
        assert rate_upper_bound(count, 4.0) == pytest.approx(limit / 4, abs=1e-4)
    assert hours_needed(1.0) == pytest.approx(2.9957, abs=1e-4) and rate_upper_bound(0, 0.0) == float("inf")


def test_report_files(tmp_path):
    stream = grid_stream()
    post = fake_posteriors(stream, [(w.start_s, w.label, 0.9) for w in stream.truth])
    result = evaluate(EventDecoder(LABELS), [(post, stream)], [(post, stream)])
    paths = write_report(result, tmp_path / "out", {"checkpoint": "x.pt", "split": "test", "seed": 0,
                                                    "duration_s": stream.duration_s})
    doc = json.loads(paths["json"].read_text())
    assert doc["default"]["hits"] == 20 and len(doc["det"]) > 10 and set(doc["calibration"]["thresholds"]) == {
        "yes", "no", "up"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert md.startswith("## Keyword spotting on streams") and "| default | 20/20 |" in md


# ------------------------------------------------------------------------------------------ the CLI

def test_cli_on_a_trained_checkpoint(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([str(trained_checkpoint), "--minutes", "1.5", "--out", str(out), "--json", "--seed", "3", *SHORT]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads((out / "streameval.json").read_text()) == doc
    assert (out / "streameval_det.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "streameval.md").is_file()
    assert doc["split"] == "test" and doc["duration_s"] == 90.0 and doc["keywords_said"] == 24
    default = doc["default"]
    assert default["hits"] + default["misses"] <= default["keywords_said"]
    assert set(doc["calibration"]["thresholds"]) == {"yes", "no", "up", "down", "left", "right", "stop", "go"}
    assert doc["detector"] == DetectorRules().to_dict()  # no stored rules: the checkpoint config's kws rules
    # A trained model finds most words on its own test speakers' stream.
    assert default["miss_rate"] < 0.5, default
    # Which audio, how many hours, and every rate with its bound.
    assert doc["audio"]["heard_in_training"] is False and doc["audio"]["noise_stretch"] == [0.9, 1.0]
    assert doc["audio"]["negative_hours"] == pytest.approx(2 / 60, abs=1e-3)
    assert doc["calibration"]["hours"] == pytest.approx((1.5 + 3) / 60, abs=1e-3)
    bound = rate_upper_bound(default["false_alarms"], default["hours"])
    assert default["fa_per_hour_bound"] == pytest.approx(bound, rel=1e-4)
    assert "95 % upper bound" in (out / "streameval.md").read_text()


SHORT = ["--negative-minutes", "2", "--validation-minutes", "1.5", "--validation-negative-minutes", "3"]


def test_cli_stores_a_calibration_into_the_checkpoint(trained_checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "best_sc.pt"
    shutil.copyfile(trained_checkpoint, ckpt)
    before = ckpt.read_bytes()
    assert main([str(ckpt), "--root", str(tmp_path / "nowhere"), "--store", *SHORT]) == 2  # fails: file untouched
    assert ckpt.read_bytes() == before
    assert main([str(ckpt), "--out", str(tmp_path / "eval"), "--json", "--store", "--target-fa-per-hour", "30",
                 *SHORT]) == 0
    doc = json.loads(capsys.readouterr().out)
    stored = load_best(ckpt)
    assert stored["thresholds"] == doc["calibration"]["thresholds"] and stored["detector"] == DetectorRules().to_dict()
    assert stored["calibration"]["settings"]["target_fa_per_hour"] == 30.0
    assert stored["calibration"]["settings"]["negative_minutes"] == 3.0
    # The next run starts from the stored settings and thresholds: its default row is the calibrated one.
    assert main([str(ckpt), "--out", str(tmp_path / "again"), "--json", *SHORT[:2]]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["default_thresholds"] == stored["thresholds"] and again["settings"]["target_fa_per_hour"] == 30.0


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, trained_checkpoint):
    for args, message in (([str(tmp_path / "missing.pt")], "checkpoint not found"),
                          ([str(trained_checkpoint), "--root", str(tmp_path / "nowhere")], "--root: folder not found")):
        run = subprocess.run([sys.executable, "-m", "sctrain.streameval", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=False)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], run.stderr


def test_cli_plays_negatives_files_after_the_split(trained_checkpoint, tmp_path, capsys):
    sample = SHARED / "data" / "speech_commands_v001_sample"
    if not sample.is_dir():
        pytest.skip("the shared v0.01 sample is absent")
    assert main([str(trained_checkpoint), "--minutes", "1", "--out", str(tmp_path / "eval"), "--json",
                 "--negatives", str(sample), *SHORT[2:], "--negative-minutes", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    files = doc["audio"]["negative_files"]
    assert files and not any(f"/{word}/" in f for f in files for word in ("yes", "no", "up", "down", "stop"))
    seconds = sum(sf.info(f).duration for f in files)
    # The mini set's words are all keywords and no keyword-free audio is generated (its babble would be other
    # speech too): the only other speech in the run is the files, end to end.
    assert doc["default"]["hours_by_section"]["unknown"] == pytest.approx(seconds / 3600, abs=2e-6)

"""Keywords from text (sctrain.tts): real engines write real 1 s clips that the trainer takes unchanged."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import REPO, run, trainer_for

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import to_model_rate
from sctrain.data.sampler import class_balanced_weights
from sctrain.data.sources import extra_groups
from sctrain.data.speechcommands import DatasetError, scan_dataset
from sctrain.tts.clips import loudest_second, to_clip
from sctrain.tts.engines import ENGINES, INSTALL, EngineMissing, load_engines

WORDS = ["hey_computer", "stop"]


def engine_or_skip(name: str):
    try:
        return load_engines([name])[name]
    except EngineMissing as e:  # CI installs all three (.ci/run, the tts extra)
        pytest.skip(str(e))


def write(out: Path, engines: str, per_word: int = 3, negatives: int = 0, extra: tuple = ()) -> str:
    result = run([sys.executable, "-m", "sctrain.tts", str(out), "--words", ",".join(WORDS), "--per-word",
                  str(per_word), "--negatives", str(negatives), "--engines", engines, "--jobs", "1", *extra])
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def espeak_set(tmp_path_factory) -> Path:
    """hey_computer and stop x 12 clips by eSpeak NG (the fastest engine), plus 12 negative clips."""
    engine_or_skip("espeak")
    out = tmp_path_factory.mktemp("tts") / "espeak"
    write(out, "espeak", per_word=12, negatives=12)
    return out


def test_resampling_matches_an_independent_reference():
    """22.05 kHz (Piper, eSpeak) to 16 kHz: a 1 kHz tone comes out as the tone computed at 16 kHz directly, and
    a 10 kHz tone (above the new Nyquist frequency) is filtered out instead of aliasing to 6 kHz."""
    rate = 22050
    t_in, t_out = np.arange(rate) / rate, np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = to_model_rate(0.5 * np.sin(2 * np.pi * 1000 * t_in), rate)
    assert len(tone) == SAMPLE_RATE
    middle = slice(400, -400)  # away from the edges, where the filter sees zeros
    assert np.max(np.abs(tone[middle] - 0.5 * np.sin(2 * np.pi * 1000 * t_out)[middle])) < 5e-3
    high = to_model_rate(0.5 * np.sin(2 * np.pi * 10000 * t_in), rate)
    assert np.sqrt(np.mean(high[middle] ** 2)) < 0.5 / np.sqrt(2) * 10 ** (-40 / 20)


def test_long_speech_keeps_its_loudest_second():
    rng = np.random.default_rng(0)
    audio = 0.01 * rng.standard_normal(30000)
    audio[17000:21000] += 0.8 * np.sin(np.arange(4000) / 3)  # the word, 1.06-1.31 s into 1.9 s
    start = loudest_second(audio)
    assert start <= 17000 and start + CLIP_SAMPLES >= 21000
    clip, fit = to_clip(audio, SAMPLE_RATE, rng)
    assert clip.dtype == np.int16 and len(clip) == CLIP_SAMPLES and fit["offset"] == -start
    assert np.max(np.abs(clip)) == pytest.approx(32768 * 10 ** (fit["peak_db"] / 20), rel=1e-3)
    short, fit = to_clip(audio[17000:21000], SAMPLE_RATE, rng)  # a short word lands whole inside the second
    assert len(short) == CLIP_SAMPLES and 0 <= fit["offset"] <= CLIP_SAMPLES - 4000
    assert np.abs(short[: fit["offset"]]).max(initial=0) == 0


@pytest.mark.parametrize("name", list(ENGINES))
def test_each_engine_speaks_the_words_as_1s_clips(name, tmp_path):
    engine_or_skip(name)
    out = tmp_path / name
    write(out, name, per_word=3)
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 6 and {e["engine"] for e in entries} == {name}
    for e in entries:
        info = sf.info(str(out / e["path"]))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SAMPLE_RATE, 1, CLIP_SAMPLES, "PCM_16")
        audio, _ = sf.read(str(out / e["path"]), dtype="float32")
        peak_db = 20 * np.log10(np.max(np.abs(audio)))
        assert peak_db == pytest.approx(e["fit"]["peak_db"], abs=0.1)  # the level the manifest says
        frames = audio[: CLIP_SAMPLES // 160 * 160].reshape(-1, 160)
        loud = np.sqrt(np.mean(frames ** 2, axis=1)) > 10 ** ((e["fit"]["peak_db"] - 30) / 20)
        assert 0.1 < loud.mean() * 1.0 < 1.0, e  # audible speech for 0.1 s or more, and pauses
        assert e["text"].rstrip(".!?") == e["path"].split("/")[0].replace("_", " ")
    spoken = {w: np.mean([e["fit"]["speech_s"] for e in entries if e["path"].startswith(w)]) for w in WORDS}
    assert spoken["hey_computer"] > spoken["stop"]  # four syllables take longer than one


def test_a_missing_engine_is_one_line_naming_how_to_install_it(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)  # a PATH with Python and nothing else on it
    for name, program in (("espeak", "espeak-ng"), ("flite", "flite")):
        result = run([sys.executable, "-m", "sctrain.tts", str(tmp_path / name), "--words", "stop",
                      "--engines", name], env={"PATH": str(bare)})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"error: TTS engine {name} is not installed ({program} not on PATH): {INSTALL[name]}"]
        assert not (tmp_path / name).exists()  # nothing written


def test_a_rerun_continues_and_a_changed_setting_is_refused(espeak_set, tmp_path):
    out = Path(shutil.copytree(espeak_set, tmp_path / "copy"))
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.wav")}
    lost = sorted((out / "stop").iterdir())[0]
    lost.unlink()  # deleted, or never finished
    stdout = write(out, "espeak", per_word=13, negatives=12)
    assert "made 3 clips" in stdout  # the lost one and a 13th of each word
    assert lost.is_file() and all(p.stat().st_mtime_ns == t for p, t in before.items() if p != lost)
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 2 * 13 + 12 == len(list(out.glob("*/*.wav")))
    result = run([sys.executable, "-m", "sctrain.tts", str(out), "--words", ",".join(WORDS), "--per-word", "13",
                  "--engines", "espeak", "--seed", "1"])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {out} was written with seed=0, not 1; use the same seed to continue it, or pick a new folder"]


def test_negatives_sound_like_the_keywords_but_never_the_same():
    pytest.importorskip("pronouncing", reason="CMUdict comes with the tts extra")
    from sctrain.tts.negatives import adversarial_negatives, pronounce

    negatives = adversarial_negatives(["hey_computer", "stop", "no"])
    texts = {n.text for n in negatives}
    assert {"hey", "computer", "commuter", "hey commuter"} <= texts  # parts, a near word, a part swapped
    assert {"step", "cop"} & texts and "stop" not in texts
    assert "know" not in texts  # pronounced as "no": a negative would teach that the keyword is not itself
    keywords = {pronounce(w) for w in ("hey computer", "stop", "no")}
    assert not keywords & {pronounce(n.text) for n in negatives}
    assert any(n.kind == "general" for n in negatives)


def test_tts_clips_join_real_ones_with_a_set_share(espeak_set, mini_root):
    """data.extra_roots: every TTS clip trains; root keeps its lists, noise and root_train_clips per word."""
    index = scan_dataset(mini_root, "keywords", keywords=["stop"], unknown_ratio=0, extra_roots=[espeak_set],
                         root_train_clips=2)
    train = index.splits["train"]
    stop = index.labels.index("stop")
    extra = extra_groups([c.path for c in train])
    assert sum(1 for c, e in zip(train, extra) if c.label == stop and not e) == 2
    assert sum(1 for c, e in zip(train, extra) if c.label == stop and e) == 12
    # hey_computer, mini's seven other words and the negatives are all _unknown_ here
    assert index.labels == ["stop", "_unknown_", "_silence_"]
    assert all(not Path(c.path).is_absolute() for s in ("validation", "test") for c in index.splits[s])
    labels = np.array([c.label for c in train])
    weights = class_balanced_weights(labels, len(index.labels), extra, 0.25)
    assert weights[(labels == stop) & (extra == 1)].sum() == pytest.approx(0.25 / 3)
    assert weights[labels == stop].sum() == pytest.approx(1 / 3)
    with pytest.raises(DatasetError, match="data.extra_roots: dataset folder not found"):
        scan_dataset(mini_root, "all", extra_roots=[espeak_set / "nothing"])


def test_the_tts_folder_trains_through_the_cli(espeak_set, tmp_path):
    """The folder is a dataset like any other: python -m sctrain trains on it unchanged."""
    result = run([sys.executable, "-m", "sctrain", "--config", "configs/debug.yaml", f"data.root={espeak_set}",
                  "data.task=keywords", "data.keywords=[hey_computer,stop]", "data.silence=false",
                  "model.kwsnet.width=8", "data.num_workers=0", "train.epochs=1", "train.max_steps=3",
                  "latency.enabled=false", "tracking.report=false", "tracking.mode=disabled", "tracking.log_examples=0",
                  f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["labels"] == ["hey_computer", "stop", "_unknown_"]  # the negatives' folders are _unknown_
    assert (tmp_path / "run" / "best_sc.pt").is_file()


def test_the_trainer_draws_tts_clips_at_data_extra_share(espeak_set, mini_root, tmp_path):
    from sctrain.config import load_config

    cfg = load_config(REPO / "configs/debug.yaml", [
        f"data.root={mini_root}", "data.task=keywords", "data.keywords=[stop]", f"data.extra_roots=[{espeak_set}]",
        "data.root_train_clips=2", "data.extra_share=0.75", "data.num_workers=0", "model.kwsnet.width=8",
        "tracking.mode=disabled", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}"])
    with trainer_for(cfg) as trainer:
        files = trainer.data.split("train").files
        labels = trainer.data.split("train").labels
        drawn = trainer.sampler.stream(40000)
    stop = [i for i in drawn if labels[i] == 0]
    assert np.mean([Path(files[i]).is_absolute() for i in stop]) == pytest.approx(0.75, abs=0.03)

"""The reliability issue of the detector paths (issue 22): caches that check themselves, sizes checked before work
starts, one check per rule shared by the command line and the config, and the small lines a user would otherwise
puzzle over. Each test reproduces one finding; streaming hours of audio in blocks is tested in test_streaming.py,
the output folder turning read-only mid-run in test_faults.py."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import REPO, run, train_on_one_thread

from sctrain.artifacts.detector import STREAM_BYTES_PER_MINUTE, hop_samples, memory_bytes, target_fa_problem
from sctrain.audio.constants import SAMPLE_RATE
from sctrain.cli import export as export_cli
from sctrain.cli import predict, streameval
from sctrain.config import ConfigError, load_config
from sctrain.data.pack import pack_dataset
from sctrain.data.speechcommands import scan_dataset
from sctrain.inference.loading import load_model
from sctrain.inference.streaming import StreamingDetector

DEBUG = REPO / "configs/debug.yaml"


def pack_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "sctrain.data.pack"]


def one_error_line(capsys_or_text, *names: str) -> str:
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """best_sc.pt after two steps on the generated dataset (task all: no _silence_, no calibration): a real
    checkpoint for the command lines' argument and file checks, in seconds."""
    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(DEBUG, [f"data.root={synthetic_root}", f"output_dir={out / 'run'}", "train.epochs=1",
                              "train.max_steps=2", "model.kwsnet.width=8", "data.num_workers=0",
                              "latency.enabled=false", "tracking.report=false", "tracking.mode=disabled"])
    train_on_one_thread(cfg)
    return out / "run" / "best_sc.pt"


# ----------------------------------------------------------------------- a cache that checks itself

def _flip_one(labels: np.ndarray) -> None:
    labels[0] = (labels[0] + 1) % (labels.max() + 1)


def _swap_two(labels: np.ndarray) -> None:  # class counts unchanged: only the checksum sees it
    j = int(np.flatnonzero(labels != labels[0])[0])
    labels[0], labels[j] = labels[j], labels[0]


DAMAGE = {
    "every label 0": ("labels_train.npy", lambda a: a.fill(0), "labels_train.npy has class counts"),
    "a label past the last class": ("labels_train.npy", lambda a: a.__setitem__(0, 99),
                                    "labels_train.npy holds label 99, outside 0..5"),
    "one label flipped": ("labels_validation.npy", _flip_one, "labels_validation.npy has class counts"),
    "two labels swapped": ("labels_test.npy", _swap_two, "labels_test.npy does not match the checksum"),
    "one sample changed": ("audio_train.npy", lambda a: a.__setitem__((3, 100), a[3, 100] ^ 1),
                           "audio_train.npy does not match the checksum"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_array_that_does_not_hold_what_was_packed_is_packed_again(synthetic_copy, caplog, damage):
    name, change, reason = DAMAGE[damage]
    folder = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False).cache_dir
    packed = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "meta.json"}
    array = np.load(folder / name)
    change(array)
    np.save(folder / name, array)
    with caplog.at_level(logging.WARNING):
        again = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    warnings = pack_warnings(caplog)
    assert len(warnings) == 1 and reason in warnings[0] and warnings[0].endswith("packing it again"), warnings
    assert again.cache_dir == folder
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "meta.json"} == packed


@pytest.mark.parametrize("damage", ["lines swapped", "lists swapped", "truncated labels"])
def test_a_swapped_file_list_or_a_truncated_array_is_packed_again(synthetic_copy, caplog, damage):
    folder = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False).cache_dir
    packed = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "meta.json"}
    if damage == "lines swapped":  # the same names, two clips' rows exchanged
        lines = (folder / "files_train.txt").read_text().splitlines()
        lines[0], lines[-1] = lines[-1], lines[0]
        (folder / "files_train.txt").write_text("".join(f"{line}\n" for line in lines))
        reason = "files_train.txt does not match the checksum"
    elif damage == "lists swapped":  # validation and test have 12 clips each: the counts still agree
        shutil.move(folder / "files_test.txt", folder / "swap.txt")
        shutil.move(folder / "files_validation.txt", folder / "files_test.txt")
        shutil.move(folder / "swap.txt", folder / "files_validation.txt")
        reason = "does not match the checksum"
    else:
        data = (folder / "labels_train.npy").read_bytes()
        (folder / "labels_train.npy").write_bytes(data[:-8])
        reason = "labels_train.npy is"
    with caplog.at_level(logging.WARNING):
        pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    warnings = pack_warnings(caplog)
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "meta.json"} == packed


@pytest.mark.parametrize("damage", ["invalid", "empty", "deleted", "a list"])
def test_a_damaged_meta_json_is_one_warning_and_a_repack_that_moves_into_place(synthetic_copy, caplog, damage):
    folder = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False).cache_dir
    meta = folder / "meta.json"
    if damage == "deleted":
        meta.unlink()
    else:
        meta.write_text({"invalid": '{"format": 3, "fingerprint": ', "empty": "", "a list": "[1, 2]"}[damage])
    with caplog.at_level(logging.WARNING):
        again = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    warnings = pack_warnings(caplog)
    assert len(warnings) == 1 and "has a damaged meta.json" in warnings[0], warnings
    assert again.cache_dir == folder and json.loads(meta.read_text())["counts"] == again.meta["counts"]
    assert not list(folder.parent.glob(".*damaged*")) and not list(folder.parent.glob(".*tmp*"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)  # and is reused from then on
    assert pack_warnings(caplog) == []


def test_a_cache_whose_labels_were_zeroed_does_not_train_silently(synthetic_copy, tmp_path):
    # The probe: the run reused the cache, labelled every clip as one class and ended with exit 0.
    folder = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False).cache_dir
    labels = np.load(folder / "labels_train.npy")
    np.save(folder / "labels_train.npy", np.zeros_like(labels))
    result = run([sys.executable, "-m", "sctrain", "--config", str(DEBUG), f"data.root={synthetic_copy}",
                  f"output_dir={tmp_path / 'run'}", "train.epochs=1", "train.max_steps=1", "data.num_workers=0",
                  "latency.enabled=false", "tracking.report=false", "model.kwsnet.width=8"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("does not match its meta.json (labels_train.npy has class counts") == 1
    assert np.array_equal(np.load(folder / "labels_train.npy"), labels)


# ------------------------------------------------------------------------- sizes, before work starts

def test_stream_minutes_that_cannot_fit_are_refused_at_config_time_naming_the_key():
    limit = memory_bytes()
    if limit is None:
        pytest.skip("this OS does not report its memory")
    minutes = limit / STREAM_BYTES_PER_MINUTE  # twice what the check allows
    for key in ("validation_minutes", "negative_minutes", "test_minutes", "test_negative_minutes"):
        with pytest.raises(ConfigError) as e:
            load_config(DEBUG, [f"kws.{key}={minutes:.0f}"])
        assert str(e.value).startswith(f"config key 'kws.{key}': {minutes:.0f} min is too long"), e.value
        assert "GiB of memory" in str(e.value)
    load_config(DEBUG, ["kws.validation_minutes=60", "kws.negative_minutes=600"])  # hours still fit
    with pytest.raises(ConfigError, match="kws.validation_minutes"):
        load_config(DEBUG, ["kws.validation_minutes=100000"])


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_target_fa_per_hour_has_one_rule_for_the_flag_and_the_key(tiny_checkpoint, value, capsys):
    with pytest.raises(ConfigError) as e:
        load_config(DEBUG, [f"kws.target_fa_per_hour={value}"])
    with pytest.raises(SystemExit) as stop:
        streameval.parse_args([str(tiny_checkpoint), "--target-fa-per-hour", value])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("python -m sctrain.streameval: error: --target-fa-per-hour must be a finite number > 0")
    if value not in ("nan", "inf"):  # the config parser refuses non-finite floats before any field check
        assert str(e.value) == f"config key 'kws.target_fa_per_hour': {target_fa_problem(float(value))}"
        assert line.endswith(target_fa_problem(float(value)))


@pytest.mark.parametrize("argv,message", [
    (["--minutes", "inf"], "--minutes must be a finite number of minutes, got inf"),
    (["--negative-minutes", "inf"], "--negative-minutes must be a finite number of minutes, got inf"),
    (["--seed", "-5"], "--seed must be >= 0, got -5"),
])
def test_streameval_flags_are_refused_by_name(tiny_checkpoint, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        streameval.parse_args([str(tiny_checkpoint), *argv])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(message)


def test_streameval_minutes_that_cannot_fit_are_one_line_before_any_stream(tiny_checkpoint, capsys):
    limit = memory_bytes()
    if limit is None:
        pytest.skip("this OS does not report its memory")
    minutes = f"{limit / STREAM_BYTES_PER_MINUTE:.0f}"
    assert streameval.main([str(tiny_checkpoint), "--minutes", minutes, "--json"]) == 2
    one_error_line(capsys, f"sctrain: error: --minutes {minutes} min is too long", "GiB of memory")


def test_streameval_without_noise_recordings_is_an_error_not_noise_figures(tiny_checkpoint, synthetic_root, tmp_path,
                                                                           capsys):
    root = Path(shutil.copytree(synthetic_root, tmp_path / "sc", ignore=shutil.ignore_patterns(".sctrain_cache")))
    shutil.rmtree(root / "_background_noise_")
    assert streameval.main([str(tiny_checkpoint), "--root", str(root), "--out", str(tmp_path / "eval"),
                            "--minutes", "0.2", "--negative-minutes", "0", "--validation-minutes", "0.2",
                            "--validation-negative-minutes", "0", "--json"]) == 2
    one_error_line(capsys, "sctrain: error: no noise recordings", "no _background_noise_", "--noise DIR")
    assert not (tmp_path / "eval").exists()


# --------------------------------------------------------------------------- predict --stream's rules

def test_hop_ms_has_one_rule_for_the_command_line_and_the_detector(tiny_checkpoint, capsys):
    model = load_model(tiny_checkpoint)
    for hop in (0.01, 0.0, -1.0, 1000.5, float("inf")):
        with pytest.raises(SystemExit):
            predict.parse_args([str(tiny_checkpoint), "x.wav", "--stream", "--hop-ms", str(hop)])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        with pytest.raises(ValueError) as e:
            StreamingDetector(model, hop_ms=hop)
        assert line.endswith(str(e.value).replace("hop_ms", "--hop-ms", 1)), (line, e.value)
        assert "must be from 0.0625 (one sample at 16000 Hz) to 1000 ms" in line
    assert hop_samples(0.0625) == 1 and hop_samples(1000) == SAMPLE_RATE


def test_refractory_inf_is_refused(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit):
        predict.parse_args([str(tiny_checkpoint), "x.wav", "--stream", "--refractory-ms", "inf"])
    assert capsys.readouterr().err.strip().endswith("--refractory-ms must be a finite number >= 0, got inf")
    with pytest.raises(ValueError, match="refractory_ms must be a finite number >= 0"):
        StreamingDetector(load_model(tiny_checkpoint), refractory_ms=float("inf"))


def test_feed_refuses_nan(tiny_checkpoint):
    detector = StreamingDetector(load_model(tiny_checkpoint))
    detector.feed(np.zeros(800, np.float32))
    chunk = np.zeros(800, np.float32)
    chunk[5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite samples \(after 0.050 s of audio\)"):
        detector.feed(chunk)


def test_a_file_shorter_than_a_window_and_the_smoothing_in_time_are_said(tiny_checkpoint, tmp_path, capsys):
    sf.write(tmp_path / "short.wav", np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)
    assert predict.main([str(tiny_checkpoint), str(tmp_path / "short.wav"), "--stream"]) == 0
    out = capsys.readouterr().out
    assert "(0 windows, " in out and "shorter than one window (1 s): nothing scored" in out
    assert predict.main([str(tiny_checkpoint), str(tmp_path / "short.wav"), "--stream", "--hop-ms", "1"]) == 0
    err = capsys.readouterr().err
    assert "note: smoothing averages 8 windows, 8 ms at --hop-ms 1 (800 ms at the 100 ms hop" in err, err
    assert predict.main([str(tiny_checkpoint), str(tmp_path / "short.wav"), "--stream", "--hop-ms", "1",
                         "--smooth", "800", "--json"]) == 0
    captured = capsys.readouterr()
    assert "note:" not in captured.err and json.loads(captured.out)["results"][0]["smooth_ms"] == 800.0


# ------------------------------------------------------------------------- the run folder and the data

def _train(root: Path, out: Path, *extra: str):
    return run([sys.executable, "-m", "sctrain", "--config", str(DEBUG), f"data.root={root}", f"output_dir={out}",
                "train.epochs=1", "train.max_steps=1", "data.num_workers=0", "latency.enabled=false",
                "tracking.report=false", "model.kwsnet.width=8", *extra])


def test_data_errors_leave_no_output_folder(synthetic_root, tmp_path):
    cases = [(tmp_path / "absent", ["data.download=false"], f"no SpeechCommands layout in {tmp_path / 'absent'}"),
             (synthetic_root, ["data.task=keywords", "data.keywords=yes,zebra"], "zebra")]
    for i, (root, extra, text) in enumerate(cases):
        out = tmp_path / f"run{i}"
        result = _train(root, out, *extra)
        assert result.returncode == 2 and text in result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
        assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_a_missing_resume_path_is_said_before_packing_naming_the_key(synthetic_copy, tmp_path):
    result = _train(synthetic_copy, tmp_path / "run", f"train.resume={tmp_path / 'nope'}")
    line = one_error_line(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 2 and line.startswith(
        f"sctrain: error: config key 'train.resume': no training state at {tmp_path / 'nope'}"), result.stderr
    assert not (synthetic_copy / ".sctrain_cache").exists()  # nothing was packed
    assert not (tmp_path / "run").exists()


def test_clips_in_nested_folders_are_named(synthetic_copy, caplog):
    nested = synthetic_copy / "yes" / "session2"
    nested.mkdir()
    shutil.copy(next((synthetic_copy / "no").glob("*.wav")), nested / "extra.wav")
    with caplog.at_level(logging.WARNING):
        scan_dataset(synthetic_copy, "all")
    assert any("1 clips in sub-folders of word folders are ignored (first: yes/session2/extra.wav)" in r.getMessage()
               for r in caplog.records), caplog.text


def test_channels_last_without_convolutions_is_said(synthetic_root, tmp_path):
    result = _train(synthetic_root, tmp_path / "run", "model.name=kwt", "train.channels_last=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.channels_last=true changes nothing for model.name=kwt" in result.stderr


def test_bcresnet_sub_bands_against_n_mels_at_config_time():
    with pytest.raises(ConfigError, match=r"model.bcresnet.*64 feature bands .* not divisible by sub_bands=5"):
        load_config(DEBUG, ["model.name=bcresnet", "features.n_mels=64"])
    load_config(DEBUG, ["model.name=bcresnet", "features.n_mels=40"])


def test_export_without_parity_clips_says_why(tiny_checkpoint, tmp_path, capsys):
    assert export_cli.main([str(tiny_checkpoint), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                            "--check-audio", str(tmp_path / "absent")]) == 2
    one_error_line(capsys, f"no audio clips for the parity check ({tmp_path / 'absent'}: not found)")

"""Keyword tasks: labels and negatives from the word folders, split lists for a folder without them, the
official test set (from a local server), and thresholds calibrated after training that inference uses."""
from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import REPO, train_on_one_thread

from sctrain.artifacts.best import load_best
from sctrain.artifacts.detector import DetectorRules
from sctrain.artifacts.files import CheckpointError, atomic_save
from sctrain.audio.constants import INT16_SCALE, SAMPLE_RATE
from sctrain.audio.io import read_clip, to_int16
from sctrain.cli import predict
from sctrain.config import ConfigError, DataConfig, config_from_dict, load_config
from sctrain.data import speechcommands as sc
from sctrain.data.hashsplit import WRITTEN_MARKER, reference_lists
from sctrain.data.pack import load_dataset, pack_dataset
from sctrain.data.speechcommands import KEYWORDS, KWS12_LABELS, DatasetError, scan_dataset
from sctrain.data.synthetic import write_synthetic_dataset
from sctrain.inference.export import OnnxModel, TorchScriptModel, export_onnx, export_torchscript, metadata
from sctrain.inference.loading import load_model
from sctrain.inference.streaming import StreamingDetector

THREE = ["yes", "no", "up"]


@pytest.fixture(scope="module")
def words12(tmp_path_factory) -> Path:
    """The ten keywords + zero, one; 20 speakers (16 train, 2 validation, 2 test), each saying each word once."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("w12") / "sc", words=12, per_word=20, seed=5)


def _counts(index, split: str) -> list[int]:
    return np.bincount([c.label for c in index.splits[split]], minlength=len(index.labels)).tolist()


def _copy(src: Path, dest: Path, *skip: str) -> Path:
    return Path(shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".sctrain_cache", *skip)))


# ------------------------------------------------------------------------------------ labels and negatives

def test_keywords_name_targets_and_the_rest_is_unknown(words12):
    index = scan_dataset(words12, "keywords", keywords=["up", "yes"])
    assert index.labels == ["up", "yes", "_unknown_", "_silence_"]
    # _unknown_ and _silence_ are one mean keyword class each (TF's 10 % of the keyword clips with ten words).
    assert [_counts(index, s) for s in ("train", "validation", "test")] == [[16] * 4, [2] * 4, [2] * 4]
    unknown_words = {c.path.split("/")[0] for c in index.splits["train"] if c.label == 2}
    assert unknown_words <= set(sc.word_folders(words12)) - {"up", "yes"} and len(unknown_words) > 3
    assert index.options["keywords"] == ["up", "yes"] and index.options["silence"] is True
    kws12 = scan_dataset(words12, "kws12")  # the preset: the same rules with the ten Warden words
    assert kws12.labels == KWS12_LABELS and _counts(kws12, "train") == [16] * 12
    assert {c.path.split("/")[0] for c in kws12.splits["train"] if c.label == 10} == {"zero", "one"}
    double = scan_dataset(words12, "keywords", 2.0, 0.5, keywords=["up", "yes"], silence=False)
    assert double.labels == ["up", "yes", "_unknown_"] and _counts(double, "train") == [16, 16, 32]


def test_every_folder_a_keyword_leaves_unknown_out(words12, caplog):
    with caplog.at_level(logging.INFO, logger="sctrain.data.speechcommands"):
        index = scan_dataset(words12, "keywords")
    assert index.labels == sc.word_folders(words12) + ["_silence_"]
    assert "every word folder is a keyword, so there is no _unknown_ class" in caplog.text
    words_and_silence = scan_dataset(words12, "all", silence=True)  # silence for the plain layout too
    assert words_and_silence.labels == index.labels and _counts(words_and_silence, "train") == [16] * 13
    assert scan_dataset(words12, "all").labels == sc.word_folders(words12)


def test_silence_is_cut_at_several_levels_and_packed_so(words12, tmp_path):
    index = scan_dataset(words12, "kws12", silence_ratio=6.0)
    cuts = [c for c in index.splits["train"] if c.label == KWS12_LABELS.index("_silence_")]
    gains_db = 20 * np.log10([c.gain for c in cuts])
    near = gains_db < -60
    assert len(cuts) == 96 and 3 <= near.sum() <= 20  # a tenth near digital silence
    assert np.all(gains_db[near] == pytest.approx(sc.NEAR_SILENCE_DB, abs=0.01))
    assert gains_db[~near].min() >= -30.01 and gains_db[~near].max() <= 0 and np.ptp(gains_db[~near]) > 20
    assert all(c.gain == 1.0 for c in index.splits["train"] if c.label != 11)
    assert scan_dataset(words12, "kws12", silence_ratio=6.0).splits == index.splits  # seeded
    data = pack_dataset(index, cache_dir=tmp_path, workers=1, progress=False)
    rows = {c: i for i, c in enumerate(index.splits["train"])}
    for c in cuts[:10]:
        expected = to_int16(read_clip(words12 / c.path, c.offset) / INT16_SCALE * c.gain)
        np.testing.assert_array_equal(data.split("train").audio[rows[c]], expected)
    quietest = data.split("train").audio[rows[cuts[int(np.argmin(gains_db))]]]
    assert np.abs(quietest.astype(np.int32)).max() <= 2  # near-digital silence: a few LSB at most


def _fails(message: str, root: Path, task: str, **kwargs) -> None:
    with pytest.raises(DatasetError) as e:
        scan_dataset(root, task, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_class_without_clips_is_a_one_line_error(words12, synthetic_root, tmp_path):
    _fails(f"keywords task: keyword hello has no folder in {words12}", words12, "keywords", keywords=["yes", "hello"])
    _fails("keywords on, off, stop, go have no folder", synthetic_root, "kws12")
    ten = write_synthetic_dataset(tmp_path / "ten", words=10, per_word=20, seed=1)
    _fails("_unknown_ would have no clips: every word folder", ten, "kws12")
    quiet = _copy(synthetic_root, tmp_path / "quiet", "_background_noise_")
    _fails("label '_silence_' has no training clips: no background recording of >= 1 s", quiet, "keywords")
    held = _copy(synthetic_root, tmp_path / "held")
    with open(held / "validation_list.txt", "a") as f:
        f.writelines(f"yes/{p.name}\n" for p in (held / "yes").glob("*.wav"))
    _fails("label 'yes' has no training clips: all 20 of its clips are in", held, "all")
    (held / "empty").mkdir()
    _fails(f"{held / 'empty'} holds no .wav clips", held, "keywords", keywords=["empty"])


def test_config_keys_for_the_keyword_tasks(tmp_path):
    cfg = load_config(None, ["data.task=keywords", "data.keywords=yes,stop", "data.unknown_ratio=0.5"]).data
    assert (cfg.keywords, cfg.use_silence, cfg.unknown_ratio) == (["yes", "stop"], True, 0.5)
    assert load_config(None, []).data.use_silence is False and load_config(None, ["data.task=kws12"]).data.use_silence
    bad = [(["data.keywords=yes"], "only data.task=keywords takes a word list"),
           (["data.task=kws12", "data.silence=false"], "kws12's 12 labels include _silence_"),
           (["data.test_set=official"], "official needs data.task=kws12 or keywords"),
           (["data.task=keywords", "data.keywords=yes,yes"], "names a word twice"),
           (["data.task=keywords", "data.keywords=_silence_"], "must be word folder names"),
           (["data.silence_ratio=0"], "data.silence=false drops the class"),
           (["data.kws12_unknown_ratio=2"], "'data.kws12_unknown_ratio' is now 'data.unknown_ratio'"),
           (["kws.test_minutes=0.05"], "must be 0 (off) or >= 0.1")]
    for overrides, message in bad:
        with pytest.raises(ConfigError) as e:
            load_config(None, overrides)
        assert message in str(e.value), str(e.value)
    (tmp_path / "c.yaml").write_text("data:\n  task: keywords\n  keywords: [yes, no, stop]\n")
    with pytest.raises(ConfigError, match="quote the words"):  # YAML 1.1 reads yes/no as booleans
        load_config(tmp_path / "c.yaml")
    # Configs saved before the rename (checkpoints) still load.
    old = config_from_dict({"data": {"task": "kws12", "kws12_unknown_ratio": -1.0, "kws12_silence_ratio": 0.5}})
    assert (old.data.unknown_ratio, old.data.silence_ratio, old.data.task) == (0.0, 0.5, "kws12")
    kws = load_config(None, []).kws
    assert kws.active(has_silence=True) == (True, 10.0) and kws.active(has_silence=False) == (False, 0.0)
    assert load_config(REPO / "configs/debug.yaml").kws.active(True) == (False, 0.0)
    recipe = load_config(REPO / "configs/kws.yaml")
    assert recipe.data.task == "keywords" and recipe.kws.calibrate and 0 < recipe.kws.test_minutes <= 10
    # The recipe calibrates on the default length (30 min: docs/streaming.md, "Calibration settings").
    assert recipe.kws.validation_minutes == kws.validation_minutes == 30.0


# ------------------------------------------------------------------------------ a folder of your own words

def test_own_words_get_the_reference_split_lists(synthetic_root, tmp_path, caplog):
    root = _copy(synthetic_root, tmp_path / "mine", "*_list.txt")
    cfg = DataConfig(root=str(root), task="keywords", keywords=["yes", "no"], cache_dir=str(tmp_path / "cache"),
                     download=False, pack_workers=1)
    with caplog.at_level(logging.WARNING):
        data = load_dataset(cfg, progress=False)
    notices = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notices) == 1 and "by TensorFlow's reference hash split" in notices[0], notices
    lists = reference_lists(root)
    assert (root / "validation_list.txt").read_text() == lists["validation"] and (root / WRITTEN_MARKER).is_file()
    listed, test = set(lists["test"].split()), set(data.split("test").files)
    words = {f for f in test if not f.startswith("_")}  # _silence_ cuts aside; _unknown_ is subsampled
    assert words <= listed and {f for f in listed if f.startswith(("yes/", "no/"))} <= words
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = load_dataset(cfg, progress=False)
    assert again.cache_dir == data.cache_dir and "reusing packed dataset" in caplog.text
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # unchanged lists: no notice, no repack
    (root / WRITTEN_MARKER).unlink()  # now they look like the dataset's own: half of a pair is refused
    (root / "testing_list.txt").unlink()
    with pytest.raises(DatasetError, match="has validation_list.txt but no testing_list.txt"):
        load_dataset(cfg, progress=False)


def test_read_only_own_words_keep_their_lists_in_the_cache(synthetic_root, tmp_path, caplog):
    root = _copy(synthetic_root, tmp_path / "ro", "*_list.txt")
    cfg = DataConfig(root=str(root), cache_dir=str(tmp_path / "cache"), download=False, pack_workers=1)
    os.chmod(root, 0o555)
    try:
        with caplog.at_level(logging.WARNING):
            data = load_dataset(cfg, progress=False)
    finally:
        os.chmod(root, 0o755)
    assert not (root / "validation_list.txt").exists() and not (root / ".sctrain_cache").exists()
    written = list((tmp_path / "cache").glob("split_lists-ro-*/testing_list.txt"))
    assert len(written) == 1 and written[0].read_text() == reference_lists(root)["test"]
    assert str(written[0].parent) in caplog.text
    assert set(data.split("test").files) == set(written[0].read_text().split())


# ------------------------------------------------------------------------------------ official test set

def _test_set_archive(folder: Path) -> tuple[Path, str]:
    """A flat tar.gz like the released test set: 10 keyword folders, _unknown_ and _silence_, 2 clips each."""
    src = folder / "src"
    for k, name in enumerate(KEYWORDS + ["_unknown_", "_silence_"]):
        (src / name).mkdir(parents=True)
        for n in range(2):
            sf.write(src / name / f"c{k:02d}{n}_nohash_0.wav", np.full(8000, 100 * k + n, np.int16), SAMPLE_RATE)
    (src / "README.md").write_text("test set\n")
    archive = folder / "speech_commands_test_set_v0.02.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def test_set_server(tmp_path):
    """Serves the archive from 127.0.0.1; yields (url, sha256, requested paths)."""
    archive, digest = _test_set_archive(tmp_path / "served")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(archive.parent), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", digest, requests
    finally:
        server.shutdown()
        server.server_close()


def _data_root(words12: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "sc").symlink_to(words12)  # the layout inside the data root, as an extracted archive would be
    return root


def test_official_test_set_is_downloaded_once_and_is_the_test_split(words12, tmp_path, test_set_server,
                                                                     monkeypatch):
    url, digest, requests = test_set_server
    monkeypatch.setitem(sc.TEST_SET_URLS, "v0.02", url)
    monkeypatch.setitem(sc.TEST_SET_SHA256, "v0.02", digest)
    root = _data_root(words12, tmp_path)
    cfg = DataConfig(root=str(root), task="kws12", test_set="official", cache_dir=str(tmp_path / "cache"),
                     pack_workers=1)
    data = load_dataset(cfg, progress=False)
    extracted = root / "speech_commands_test_set_v0.02"
    assert requests == ["/speech_commands_test_set_v0.02.tar.gz"] and (extracted / ".sctrain_extracted").is_file()
    test = data.split("test")
    assert len(test) == 24 and all(f.startswith(f"{extracted}/") for f in test.files)
    assert [data.labels[i] for i in test.labels] == [Path(f).parent.name for f in test.files]
    listed = set((words12 / "testing_list.txt").read_text().split())
    for split in ("train", "validation"):  # the listed test speakers stay out of training and validation
        assert not listed & set(data.split(split).files)
    assert data.meta["options"]["test_set"] == str(extracted)
    # Extracted once: later runs (and other label sets) use it without the server.
    subset = DataConfig(root=str(root), task="keywords", keywords=["yes", "no"], test_set="official",
                        cache_dir=str(tmp_path / "cache"), pack_workers=1)
    data = load_dataset(subset, progress=False)
    assert requests == ["/speech_commands_test_set_v0.02.tar.gz"]
    names = [data.labels[i] for i in data.split("test").labels]
    assert names.count("yes") == 2 and names.count("_unknown_") == 18 and names.count("_silence_") == 2
    with pytest.raises(DatasetError, match="labels only the ten Warden keywords, not zero"):
        load_dataset(DataConfig(root=str(root), task="keywords", keywords=["yes", "zero"], test_set="official",
                                cache_dir=str(tmp_path / "cache")), progress=False)


def test_official_test_set_with_a_wrong_checksum_is_kept_as_bad(words12, tmp_path, test_set_server, monkeypatch):
    url, digest, _ = test_set_server
    monkeypatch.setitem(sc.TEST_SET_URLS, "v0.02", url)
    monkeypatch.setitem(sc.TEST_SET_SHA256, "v0.02", "0" * 64)
    root = _data_root(words12, tmp_path)
    with pytest.raises(DatasetError) as e:
        load_dataset(DataConfig(root=str(root), task="kws12", test_set="official", cache_dir=str(tmp_path / "c")),
                     progress=False)
    message = str(e.value)
    assert "\n" not in message and "checksum mismatch" in message and digest in message
    assert (root / "speech_commands_test_set_v0.02.tar.gz.bad").is_file()
    assert not (root / "speech_commands_test_set_v0.02").exists() and not list(root.glob("*.part"))
    assert set(sc.TEST_SET_SHA256) == {"v0.01", "v0.02"}  # the published values, not placeholders
    with pytest.raises(DatasetError, match="data.download is false; fetch"):
        load_dataset(DataConfig(root=str(root), task="kws12", test_set="official", download=False,
                                cache_dir=str(tmp_path / "c")), progress=False)


# ------------------------------------------------------------------- thresholds from training to inference

@pytest.fixture(scope="module")
def calibrated_run(synthetic_root, tmp_path_factory) -> Path:
    """A tiny training run with kws.calibrate=true and half-minute streams (~15 s on 2 cores)."""

    out = tmp_path_factory.mktemp("calibrated")
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"data.root={synthetic_root}", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'run'}",
        "data.task=keywords", "data.keywords=yes,no,up", "data.num_workers=0", "model.kwsnet.width=8",
        "train.epochs=2", "train.batch_size=32", "train.checkpoint_every=0", "latency.enabled=false",
        "tracking.report=false", "tracking.log_examples=0", "tracking.mode=disabled",
        "kws.calibrate=true", "kws.validation_minutes=0.5", "kws.test_minutes=0.5", "kws.negative_minutes=1",
        "kws.test_negative_minutes=0.5", "augment.reversed_unknown_p=0.5", "augment.generated_silence_p=0.5"])
    train_on_one_thread(cfg)
    return out / "run"


def test_calibrated_thresholds_land_in_the_checkpoint_and_results(calibrated_run):
    ckpt = load_best(calibrated_run / "best_sc.pt")  # weights_only: the thresholds are plain data
    thresholds = ckpt["thresholds"]
    assert set(thresholds) == set(THREE) and all(isinstance(t, float) and 0 < t <= 1 for t in thresholds.values())
    results = json.loads((calibrated_run / "results.json").read_text())["kws"]
    assert results["thresholds"] == thresholds and results["target_fa_per_hour"] == 1.0
    assert results["test"]["minutes"] == 0.5
    assert results["test"]["calibrated"]["hours"] == pytest.approx((0.5 + 0.5) / 60, abs=1e-5)  # keywords + negatives
    report = json.loads((calibrated_run / "streameval-test" / "streameval.json").read_text())
    assert report["calibration"]["thresholds"] == thresholds and report["duration_s"] == 30.0
    assert (calibrated_run / results["report"]).is_file()
    assert (calibrated_run / "streameval-test" / "streameval_det.png").is_file()
    assert load_model(calibrated_run / "best_sc.pt").thresholds == thresholds
    # The rules the thresholds were chosen under are stored with them (the kws defaults here).
    assert ckpt["detector"] == results["detector"] == report["detector"] == DetectorRules().to_dict()


def test_detector_and_predict_use_the_stored_thresholds(calibrated_run, synthetic_root, tmp_path, capsys):
    path = calibrated_run / "best_sc.pt"
    model = load_model(path)
    stored = model.thresholds
    expected = [stored.get(lab, np.inf) for lab in model.labels]  # fillers never fire
    np.testing.assert_array_equal(StreamingDetector(model).decoder.thresholds, expected)
    assert set(StreamingDetector(model, threshold=0.7).decoder.thresholds[:3]) == {0.7}
    wave = np.concatenate([read_clip(p) for p in sorted((synthetic_root / "yes").glob("*.wav"))[:3]])
    sf.write(tmp_path / "w.wav", wave, SAMPLE_RATE)
    for extra, want in (([], stored), (["--threshold", "0.7"], dict.fromkeys(THREE, 0.7))):
        assert predict.main([str(path), str(tmp_path / "w.wav"), "--stream", "--json", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["thresholds"] == want
    # A checkpoint from before calibration keeps 0.5; a damaged thresholds entry is a one-line error.
    ckpt = load_best(path)
    atomic_save({k: v for k, v in ckpt.items() if k != "thresholds"}, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.thresholds == {} and set(StreamingDetector(old).decoder.thresholds[:3]) == {0.5}
    atomic_save({**ckpt, "thresholds": {"yes": 2.0}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="'thresholds' must map its labels to numbers in"):
        load_model(tmp_path / "bad.pt")


def test_detector_and_predict_use_the_stored_rules(calibrated_run, synthetic_root, tmp_path, capsys):
    """best_sc.pt's detector rules -> StreamingDetector and predict --stream defaults; a flag still wins."""
    ckpt = load_best(calibrated_run / "best_sc.pt")
    assert StreamingDetector(load_model(calibrated_run / "best_sc.pt")).rules == DetectorRules()
    stored = {"smooth": 3, "refractory_ms": 700.0, "filler_gate": False}
    atomic_save({**ckpt, "detector": stored}, tmp_path / "other.pt")
    detector = StreamingDetector(load_model(tmp_path / "other.pt"))
    assert detector.rules.to_dict() == stored
    assert (detector.decoder.smooth, detector.decoder.refractory_s, detector.decoder.filler_gate) == (3, 0.7, False)
    assert StreamingDetector(load_model(tmp_path / "other.pt"), smooth=6).rules == DetectorRules(6, 700.0, False)
    wave = np.concatenate([read_clip(p) for p in sorted((synthetic_root / "no").glob("*.wav"))[:2]])
    sf.write(tmp_path / "w.wav", wave, SAMPLE_RATE)
    flags = ["--smooth", "5", "--filler-gate"]
    for extra, want in (([], stored), (flags, {**stored, "smooth": 5, "filler_gate": True})):
        assert predict.main([str(tmp_path / "other.pt"), str(tmp_path / "w.wav"), "--stream", "--json", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["detector"] == want
    atomic_save({**ckpt, "detector": {"smooth": 0}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad 'detector' rules \(smooth must be an integer >= 1, got 0\)"):
        load_model(tmp_path / "bad.pt")


def test_exports_carry_the_thresholds(calibrated_run, tmp_path):
    model = load_model(calibrated_run / "best_sc.pt")
    assert json.loads(metadata(model, "audio")["sctrain.thresholds"]) == model.thresholds
    assert json.loads(metadata(model, "audio")["sctrain.detector"]) == model.rules.to_dict()
    exported = TorchScriptModel(export_torchscript(model, tmp_path / "m.torchscript.pt"))
    assert (exported.thresholds, exported.detector) == (model.thresholds, model.rules.to_dict())
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    assert OnnxModel(export_onnx(model, tmp_path / "m.onnx")).thresholds == model.thresholds  # ~8 s


def test_checkpoints_chosen_by_detection(synthetic_root, tmp_path):
    # kws.select_by=detection: best_sc.pt is the epoch that found the most validation-stream keywords.
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"data.root={synthetic_root}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}",
        "data.task=keywords", "data.keywords=yes,no,up", "data.num_workers=0", "model.kwsnet.width=8",
        "train.epochs=3", "train.batch_size=32", "train.checkpoint_every=0", "latency.enabled=false",
        "tracking.report=false", "tracking.log_examples=0", "tracking.mode=disabled", "kws.calibrate=false",
        "kws.test_minutes=0", "kws.select_by=detection", "kws.select_from=0.34", "kws.selection_minutes=0.5",
        "kws.selection_negative_minutes=0.5"])
    train_on_one_thread(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = {r["epoch"]: r for r in records if r["kind"] == "selection"}
    assert sorted(scored) == [1, 2]  # from a third of the epochs on
    assert all(r["hours"] == pytest.approx(1 / 60, abs=1e-4) and 0 <= r["keywords_found"] <= 1 for r in scored.values())
    val_acc = {r["epoch"]: r["acc"] for r in records if r["kind"] == "eval" and r["split"] == "validation"}
    best = max(scored, key=lambda e: (scored[e]["keywords_found"], val_acc[e]))
    metrics = load_best(tmp_path / "run" / "best_sc.pt")["metrics"]
    assert metrics["epoch"] == best and metrics["val_keywords_found"] == scored[best]["keywords_found"]
    with pytest.raises(ConfigError, match="kws.select_by"):
        load_config(REPO / "configs/debug.yaml", ["kws.select_by=loss"])

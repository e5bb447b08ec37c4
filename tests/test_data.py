"""Data layer: fetch/verify/extract, scan and split, pack and cache, the clip dataset, the synthetic set."""
from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sctrain.cli.synth import main as synth_main
from sctrain.config import DataConfig
from sctrain.data import pack as pack_module
from sctrain.data import synthetic as synthetic_module
from sctrain.data.dataset import RING_PREFETCH, ClipDataset, clip_loader, collate_batch
from sctrain.data.pack import load_dataset, pack_dataset
from sctrain.data.ring import SLACK_SLOTS, BatchRing, RingBatch
from sctrain.data.speechcommands import KWS12_LABELS, DatasetError, ensure_dataset, is_layout, scan_dataset
from sctrain.data.synthetic import WORDS, write_synthetic_dataset


def _wav(path: Path, samples, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(samples, dtype=np.int16), rate, subtype="PCM_16")


def _tiny_layout(folder: Path) -> Path:
    """Two words, three clips each, one validation and one test clip."""
    for word in ("yes", "no"):
        for n in range(3):
            _wav(folder / word / f"a{n}b2c3d4_nohash_0.wav", np.full(800, n + 1))
    (folder / "validation_list.txt").write_text("yes/a0b2c3d4_nohash_0.wav\n")
    (folder / "testing_list.txt").write_text("no/a1b2c3d4_nohash_0.wav\n")
    return folder


def _tar_gz(src: Path, archive: Path) -> str:
    with tarfile.open(archive, "w:gz") as tar:  # flat, like the official archives
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "served" / "speech_commands_v0.02.tar.gz"
    path.parent.mkdir()
    return path, _tar_gz(_tiny_layout(tmp_path / "src"), path)


THREE = ["yes", "no", "up"]  # keywords of the 6-word synthetic set: the other three are _unknown_


@pytest.fixture(scope="module")
def kws_root(tmp_path_factory) -> Path:
    """12 words, so kws12 has two unknown words; each of 20 speakers says each word once."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("kws") / "sc", words=12, per_word=20, seed=3)


# ------------------------------------------------------------------------------------ ensure_dataset

def test_root_holding_the_layout_is_used_as_is(synthetic_root):
    assert ensure_dataset(DataConfig(root=str(synthetic_root), download=False)) == synthetic_root


def test_extracted_folder_under_root_is_found(tmp_path):
    _tiny_layout(tmp_path / "root" / "my_copy")
    assert ensure_dataset(DataConfig(root=str(tmp_path / "root"), download=False)) == tmp_path / "root" / "my_copy"


def test_local_archive_is_verified_extracted_once_and_reused(tmp_path, archive, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(archive[0], root)
    cfg = DataConfig(root=str(root), download=False)
    folder = ensure_dataset(cfg, sha256=archive[1])
    assert folder == root / "speech_commands_v0.02" and is_layout(folder)
    assert (folder / ".sctrain_extracted").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["speech_commands_v0.02", "speech_commands_v0.02.tar.gz"]
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("extracted a second time"))
    assert ensure_dataset(cfg, sha256=archive[1]) == folder


def test_local_archive_with_wrong_checksum_is_set_aside(tmp_path, archive):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(archive[0], root)
    with pytest.raises(DatasetError) as e:
        ensure_dataset(DataConfig(root=str(root), download=False), sha256="0" * 64)
    message = str(e.value)
    assert "\n" not in message and "speech_commands_v0.02.tar.gz" in message
    assert "0" * 64 in message and archive[1] in message
    assert (root / "speech_commands_v0.02.tar.gz.bad").is_file()
    assert not (root / "speech_commands_v0.02.tar.gz").exists()
    with pytest.raises(DatasetError, match="download is false"):  # the bad file is never used
        ensure_dataset(DataConfig(root=str(root), download=False), sha256=archive[1])


def test_download_checksum_mismatch_keeps_bad_file(tmp_path, archive):
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        ensure_dataset(DataConfig(root=str(root)), url=archive[0].as_uri(), sha256="f" * 64, progress=False)
    assert archive[1] in str(e.value)
    assert sorted(p.name for p in root.iterdir()) == ["speech_commands_v0.02.tar.gz.bad"]


def test_download_from_local_http_server(tmp_path, archive):
    handler = functools.partial(_QuietHandler, directory=str(archive[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive[0].name}"
        root = tmp_path / "root"
        folder = ensure_dataset(DataConfig(root=str(root)), url=url, sha256=archive[1], progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert is_layout(folder) and (root / "speech_commands_v0.02.tar.gz").is_file()
    assert not list(root.glob("*.part"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_interrupted_download_continues_where_it_stopped(tmp_path, archive):
    data, cut = archive[0].read_bytes(), archive[0].stat().st_size // 3
    ranges = []

    class CutOnce(http.server.BaseHTTPRequestHandler):
        """The archive with HTTP Range support; the first answer breaks off after `cut` bytes, as a dropped
        connection does."""

        def do_GET(self):
            wanted = self.headers.get("Range")
            ranges.append(wanted)
            start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
            self.send_response(206 if wanted else 200)
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:cut] if len(ranges) == 1 else data[start:])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path / "root"
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive[0].name}"
    try:
        with pytest.raises(DatasetError, match=r"MB received are kept in .*\.part, and the next run continues"):
            ensure_dataset(DataConfig(root=str(root)), url=url, sha256=archive[1], progress=False)
        assert (root / "speech_commands_v0.02.tar.gz.part").stat().st_size == cut
        folder = ensure_dataset(DataConfig(root=str(root)), url=url, sha256=archive[1], progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert ranges == [None, f"bytes={cut}-"]  # the second request asked for the rest only
    assert is_layout(folder) and (root / "speech_commands_v0.02.tar.gz").read_bytes() == data
    assert not list(root.glob("*.part"))


def test_stale_part_is_replaced_when_the_server_sends_the_whole_file(tmp_path, archive):
    root = tmp_path / "root"
    root.mkdir()
    (root / "speech_commands_v0.02.tar.gz.part").write_bytes(b"junk from another download")
    # file:// ignores Range and sends the whole file, which must replace the .part, not extend it.
    folder = ensure_dataset(DataConfig(root=str(root)), url=archive[0].as_uri(), sha256=archive[1], progress=False)
    assert is_layout(folder) and not list(root.glob("*.part"))


def test_offline_error_says_what_to_fetch_and_where(tmp_path):
    root = tmp_path / "root"
    url = "http://127.0.0.1:9/speech_commands_v0.02.tar.gz"
    with pytest.raises(DatasetError) as e:
        ensure_dataset(DataConfig(root=str(root)), url=url, progress=False)
    message = str(e.value)
    assert "\n" not in message and url in message
    assert str(root / "speech_commands_v0.02.tar.gz") in message and str(root / "speech_commands_v0.02") in message
    assert not list(root.iterdir())  # no .part left behind


def test_no_layout_and_download_off_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="download is false.*speech_commands_v0.01.tar.gz"):
        ensure_dataset(DataConfig(root=str(tmp_path), version="v0.01", download=False))


def test_archive_without_layout_is_rejected(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    sha = _tar_gz(tmp_path / "junk", root / "speech_commands_v0.02.tar.gz")
    with pytest.raises(DatasetError, match="holds no SpeechCommands layout"):
        ensure_dataset(DataConfig(root=str(root), download=False), sha256=sha)
    assert sorted(p.name for p in root.iterdir()) == ["speech_commands_v0.02.tar.gz"]  # no temp folder left


# ---------------------------------------------------------------------------------------- scanning

def _lines(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line}


def test_scan_all_honours_the_list_files(synthetic_root):
    index = scan_dataset(synthetic_root, "all")
    assert index.labels == sorted(WORDS[:6])
    paths = {s: {c.path for c in clips} for s, clips in index.splits.items()}
    assert paths["validation"] == _lines(synthetic_root / "validation_list.txt")
    assert paths["test"] == _lines(synthetic_root / "testing_list.txt")
    assert len(paths["train"]) + len(paths["validation"]) + len(paths["test"]) == 120
    assert not paths["train"] & (paths["validation"] | paths["test"])
    for clips in index.splits.values():
        assert all(index.labels[c.label] == c.path.split("/")[0] and c.offset == 0 for c in clips)
    assert [p.name for p in index.background] == ["hum_noise.wav", "pink_noise.wav", "white_noise.wav"]


def test_scan_kws12_maps_unknown_and_cuts_silence(kws_root):
    index = scan_dataset(kws_root, "kws12")
    assert index.labels == KWS12_LABELS
    unknown, silence = KWS12_LABELS.index("_unknown_"), KWS12_LABELS.index("_silence_")
    for split, per_class in (("train", 16), ("validation", 2), ("test", 2)):
        counts = np.bincount([c.label for c in index.splits[split]], minlength=12)
        assert list(counts) == [per_class] * 12, split  # unknown and silence match the keyword mean
    for clip in (c for c in index.splits["train"] if c.label == unknown):
        assert clip.path.split("/")[0] in ("zero", "one")
    lengths = {p.relative_to(kws_root).as_posix(): sf.info(str(p)).frames for p in index.background}
    for split, (lo, hi) in (("train", (0, 0.8)), ("test", (0.9, 1.0))):
        for clip in (c for c in index.splits[split] if c.label == silence):
            n = lengths[clip.path]
            assert lo * n <= clip.offset <= hi * n - 16000
    assert scan_dataset(kws_root, "kws12").splits == index.splits  # seeded
    assert scan_dataset(kws_root, "kws12", seed=1).splits != index.splits
    every = scan_dataset(kws_root, "kws12", unknown_ratio=0, silence_ratio=0.5)
    counts = np.bincount([c.label for c in every.splits["train"]], minlength=12)
    assert counts[unknown] == 32 and counts[silence] == 8


def test_kws12_needs_every_keyword_folder(synthetic_root):
    with pytest.raises(DatasetError, match="kws12 task: keywords on, off, stop, go have no folder") as e:
        scan_dataset(synthetic_root, "kws12")
    assert "\n" not in str(e.value)


def test_list_file_naming_missing_clips_warns(synthetic_copy, caplog):
    with open(synthetic_copy / "validation_list.txt", "a") as f:
        f.write("yes/gone_nohash_0.wav\nno/gone_nohash_0.wav\n")
    with caplog.at_level(logging.WARNING):
        scan_dataset(synthetic_copy, "all")
    assert "validation_list.txt names 2 clips missing" in caplog.text


def test_no_word_folders_is_an_error(tmp_path):
    (tmp_path / "_background_noise_").mkdir()
    with pytest.raises(DatasetError, match=f"no word folders in {tmp_path}"):
        scan_dataset(tmp_path, "all")


# ----------------------------------------------------------------------------------------- packing

def test_pack_shapes_labels_padding_and_background(synthetic_copy):
    short = synthetic_copy / "yes" / "0000beef_nohash_0.wav"
    _wav(short, np.arange(1, 9601))  # 0.6 s: zero-padded
    long = synthetic_copy / "no" / "0000beef_nohash_0.wav"
    _wav(long, np.arange(24000) % 3000)  # 1.5 s: trimmed
    index = scan_dataset(synthetic_copy, "all")
    data = pack_dataset(index, progress=False)
    assert data.cache_dir.parent == synthetic_copy / ".sctrain_cache" and data.cache_dir.name.startswith("all-")
    assert data.labels == index.labels and data.skipped == []
    for name, clips in index.splits.items():
        split = data.split(name)
        assert split.audio.shape == (len(clips), 16000) and split.audio.dtype == np.int16
        assert split.labels.dtype == np.int64 and list(split.labels) == [c.label for c in clips]
        assert split.files == [c.path for c in clips] and len(split) == len(clips)
    train = data.split("train")
    row = train.files.index("yes/0000beef_nohash_0.wav")
    np.testing.assert_array_equal(train.audio[row], np.r_[np.arange(1, 9601), np.zeros(6400)])
    row = train.files.index("no/0000beef_nohash_0.wav")
    np.testing.assert_array_equal(train.audio[row], np.arange(16000) % 3000)
    assert list(train.class_counts(6)) == list(np.bincount(train.labels, minlength=6))
    # The noise bank holds the train stretch (the first 80 %) of each recording: the rest is the detector's.
    lengths = [int(0.8 * sf.info(str(p)).frames) for p in index.background]
    assert data.background.dtype == np.float32
    assert data.background.shape == (sum(1 + (n - 16000) // 8000 for n in lengths), 16000)
    first, _ = sf.read(str(index.background[0]), dtype="float32")
    np.testing.assert_allclose(data.background[1], first[8000:24000])


def test_pack_cache_is_reused_and_invalidated(synthetic_copy, caplog, monkeypatch):
    first = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    with monkeypatch.context() as m, caplog.at_level(logging.INFO):
        m.setattr(pack_module, "decode_into", lambda *a: pytest.fail("decoded again"))
        again = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    assert again.cache_dir == first.cache_dir and "reusing packed dataset" in caplog.text
    changed = first.split("train").files[0]
    _wav(synthetic_copy / changed, np.full(16000, 7))
    repacked = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    assert repacked.cache_dir != first.cache_dir
    assert (repacked.split("train").audio[0] == 7).all()
    kws = pack_dataset(scan_dataset(synthetic_copy, "keywords", keywords=THREE), progress=False)  # task, options keyed
    assert kws.cache_dir.name.startswith("keywords-") and kws.labels == [*THREE, "_unknown_", "_silence_"]


def test_a_repacked_source_removes_the_older_cache_unless_a_job_reads_it(synthetic_copy, caplog):
    old = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    old_dir, changed = old.cache_dir, old.split("train").files[:2]
    kws = pack_dataset(scan_dataset(synthetic_copy, "keywords", keywords=THREE), progress=False)  # not superseded
    del old  # no job reads it any more
    _wav(synthetic_copy / changed[0], np.full(16000, 7))
    with caplog.at_level(logging.INFO):
        new = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    assert not old_dir.exists() and f"removed the older packed cache {old_dir}" in caplog.text
    assert kws.cache_dir.is_dir() and (new.split("train").audio[0] == 7).all()
    assert not list(old_dir.parent.glob(".*stale*"))
    # `new` is still open here, as in a running job: the next repack keeps it.
    _wav(synthetic_copy / changed[1], np.full(16000, 9))
    with caplog.at_level(logging.INFO):
        newer = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    assert new.cache_dir.is_dir() and f"kept the older packed cache {new.cache_dir}" in caplog.text
    assert (new.split("train").audio[0] == 7).all() and (newer.split("train").audio[1] == 9).all()


def test_corrupt_clip_is_named_or_skipped(synthetic_copy, caplog):
    bad = synthetic_copy / "left" / "0000dead_nohash_0.wav"
    bad.write_bytes(b"RIFF not really a wav")
    index = scan_dataset(synthetic_copy, "all")
    with pytest.raises(DatasetError) as e:
        pack_dataset(index, progress=False)
    assert str(bad) in str(e.value) and "\n" not in str(e.value) and "skip_bad_clips" in str(e.value)
    assert [p.name for p in (synthetic_copy / ".sctrain_cache").iterdir()] == []  # no half cache left
    with caplog.at_level(logging.WARNING):
        data = pack_dataset(index, skip_bad=True, progress=False)
    assert data.skipped == ["left/0000dead_nohash_0.wav"] and "skipped 1 bad clips" in caplog.text
    assert len(data.split("train")) == len(index.splits["train"]) - 1
    assert "left/0000dead_nohash_0.wav" not in data.split("train").files


def test_wrong_rate_stereo_and_empty_clips_are_bad(synthetic_copy):
    _wav(synthetic_copy / "up" / "00000008_nohash_0.wav", np.ones(8000), rate=8000)
    sf.write(synthetic_copy / "up" / "00000002_nohash_0.wav", np.ones((16000, 2), np.int16), 16000, subtype="PCM_16")
    _wav(synthetic_copy / "up" / "00000000_nohash_0.wav", np.zeros(0))
    index = scan_dataset(synthetic_copy, "all")
    with pytest.raises(DatasetError, match=r"00000000_nohash_0.wav: empty \(and 2 more bad clips\)"):
        pack_dataset(index, progress=False)
    data = pack_dataset(index, skip_bad=True, progress=False)
    assert len(data.skipped) == 3


def test_parallel_packing_matches_serial(synthetic_copy, tmp_path, monkeypatch):
    index = scan_dataset(synthetic_copy, "keywords", keywords=THREE)
    serial = pack_dataset(index, cache_dir=tmp_path / "serial", workers=1, progress=False)
    monkeypatch.setattr(pack_module, "PARALLEL_MIN_CLIPS", 0)
    parallel = pack_dataset(index, cache_dir=tmp_path / "parallel", workers=2, progress=False)
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(serial.split(name).audio, parallel.split(name).audio)
        np.testing.assert_array_equal(serial.split(name).offsets, parallel.split(name).offsets)


def test_read_only_root_packs_into_user_cache(synthetic_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    os.chmod(synthetic_copy, 0o555)
    try:
        data = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    finally:
        os.chmod(synthetic_copy, 0o755)
    assert (tmp_path / "xdg" / "sctrain") in data.cache_dir.parents
    assert not (synthetic_copy / ".sctrain_cache").exists()


def test_clip_dataset_reads_batches_in_order(synthetic_root, tmp_path):
    split = pack_dataset(scan_dataset(synthetic_root, "all"), cache_dir=tmp_path, progress=False).split("train")
    dataset = ClipDataset(split)
    audio, labels = dataset.__getitems__([7, 0, 3, 3])
    assert audio.dtype == torch.int16 and audio.shape == (4, 16000) and labels.dtype == torch.int64
    for row, i in enumerate([7, 0, 3, 3]):
        clip, label = dataset[i]
        assert torch.equal(audio[row], clip) and labels[row].item() == label == split.labels[i]
    assert len(pickle.dumps(dataset)) < 10_000  # workers reopen the memmap instead of receiving the audio
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate_batch))
    assert [b[0].shape[0] for b in batches] == [32, 32, 32]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(split.labels))


def test_worker_batches_arrive_through_the_ring_intact(synthetic_root, tmp_path):
    # Real worker processes: every batch equals the memmap rows the sampler chose, arrives as a view of the
    # trainer's own mapping of the ring (only the slot number travels), and the previous batch is still
    # intact while the current one is used, as the ring promises.
    split = pack_dataset(scan_dataset(synthetic_root, "all"), cache_dir=tmp_path, progress=False).split("train")
    order = np.random.default_rng(0).permutation(len(split)).tolist() * 3  # 3 epochs, 6 ring slots in all
    batch = 20
    loader = clip_loader(split, batch, order, workers=2)
    ring = loader.dataset.ring
    assert ring.slots.shape == (2 * (RING_PREFETCH + SLACK_SLOTS), batch, 16000)
    previous, count = None, 0
    for k, (audio, labels) in enumerate(loader):
        rows = order[k * batch:(k + 1) * batch]
        assert torch.equal(audio, torch.from_numpy(split.audio[rows]))
        assert torch.equal(labels, torch.from_numpy(split.labels[rows]))
        assert ring.holds(audio)
        if previous is not None:
            assert torch.equal(previous, torch.from_numpy(split.audio[order[(k - 1) * batch:k * batch]]))
        previous, count = audio, count + 1
    assert count == -(-len(order) // batch)  # the last, partial batch included
    with pytest.raises(ValueError, match="does not fit"):
        ring.claim(batch + 1, 0)


def test_ring_batches_travel_as_slot_numbers_also_to_spawned_workers(synthetic_root, tmp_path):
    # A spawned worker (macOS's and Windows' default) gets the ring by pickling; what comes back is a few
    # hundred bytes, not 16000 samples a row, and is rebuilt on this process's ring.
    split = pack_dataset(scan_dataset(synthetic_root, "all"), cache_dir=tmp_path, progress=False).split("train")
    ring = BatchRing(8, (16000,), torch.int16, workers=1, prefetch_factor=RING_PREFETCH)
    dataset = ClipDataset(split, ring)
    order = list(range(len(split)))[::-1][:24]
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=order, num_workers=1,
                                         collate_fn=collate_batch, multiprocessing_context="spawn",
                                         prefetch_factor=RING_PREFETCH)
    for k, (audio, labels) in enumerate(loader):
        assert ring.holds(audio) and torch.equal(audio, torch.from_numpy(split.audio[order[8 * k:8 * k + 8]]))
        assert torch.equal(labels, torch.from_numpy(split.labels[order[8 * k:8 * k + 8]]))
    assert k == 2
    batch = RingBatch(ring, 0, 8, np.arange(8))
    assert len(pickle.dumps(batch)) < 1000
    audio, labels = pickle.loads(pickle.dumps(batch))
    assert ring.holds(audio) and torch.equal(labels, torch.arange(8))


def test_loader_without_workers_has_no_ring(synthetic_root, tmp_path):
    split = pack_dataset(scan_dataset(synthetic_root, "all"), cache_dir=tmp_path, progress=False).split("train")
    loader = clip_loader(split, 16, list(range(len(split))), workers=0, drop_last=True)
    assert loader.dataset.ring is None
    whole_batches = np.array(split.audio[:len(split) // 16 * 16])
    assert torch.equal(torch.cat([a for a, _ in loader]), torch.from_numpy(whole_batches))


def test_load_dataset_follows_the_config(synthetic_copy):
    cfg = DataConfig(root=str(synthetic_copy), download=False, task="keywords", keywords=["no", "yes"], silence=False,
                     unknown_ratio=0.5, pack_workers=1)
    data = load_dataset(cfg, progress=False)
    assert data.labels == ["no", "yes", "_unknown_"]
    assert list(data.split("train").class_counts(3)) == [16, 16, 8]


# --------------------------------------------------------------------------------- real mini dataset

def test_mini_dataset_scans_and_packs(mini_root, tmp_path):
    index = scan_dataset(mini_root, "all")
    assert index.labels == ["down", "go", "left", "no", "right", "stop", "up", "yes"]
    assert sum(len(c) for c in index.splits.values()) == 1192
    assert len(index.splits["validation"]) == len(_lines(mini_root / "validation_list.txt"))
    assert len(index.splits["test"]) == len(_lines(mini_root / "testing_list.txt"))
    data = pack_dataset(index, cache_dir=tmp_path, progress=False)
    assert [len(data.split(s)) for s in ("train", "validation", "test")] == [len(c) for c in index.splits.values()]
    assert data.background.shape[0] > 0 and data.split("test").audio.shape[1] == 16000
    assert np.abs(data.split("test").audio[:8].astype(np.int32)).max() > 1000  # real audio, not zeros


# ------------------------------------------------------------------------------------ synthetic set

def test_synthetic_layout(synthetic_root):
    assert is_layout(synthetic_root) and "synthetic" in (synthetic_root / "README.md").read_text()
    words = sorted(p.name for p in synthetic_root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert words == sorted(WORDS[:6])
    lengths = []
    for wav in synthetic_root.glob("*/*_nohash_*.wav"):
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        lengths.append(info.frames)
    assert len(lengths) == 120 and max(lengths) == 16000 and min(lengths) >= 9600
    assert any(n < 16000 for n in lengths)
    speakers = {name: {p.split("/")[1].split("_")[0] for p in _lines(synthetic_root / name)}
                for name in ("validation_list.txt", "testing_list.txt")}
    assert speakers["validation_list.txt"] and speakers["testing_list.txt"]
    assert not speakers["validation_list.txt"] & speakers["testing_list.txt"]
    assert len(_lines(synthetic_root / "validation_list.txt")) == 12
    noise = sorted((synthetic_root / "_background_noise_").glob("*.wav"))
    assert len(noise) == 3 and all(10 <= sf.info(str(p)).duration <= 20 for p in noise)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic(tmp_path, monkeypatch):
    a = _contents(write_synthetic_dataset(tmp_path / "a", words=3, per_word=8, seed=1, noise_files=1))
    monkeypatch.setattr(synthetic_module, "PARALLEL_MIN_CLIPS", 0)
    b = _contents(write_synthetic_dataset(tmp_path / "b", words=3, per_word=8, seed=1, noise_files=1, workers=2))
    c = _contents(write_synthetic_dataset(tmp_path / "c", words=3, per_word=8, seed=2, noise_files=1))
    assert a == b
    assert a.keys() != c.keys() or a != c


def test_synthetic_words_differ(tmp_path):
    root = write_synthetic_dataset(tmp_path / "sc", words=4, per_word=4, seed=0, noise_files=0)
    clips = {w: sf.read(str(next((root / w).glob("*.wav"))), dtype="float32")[0] for w in WORDS[:4]}
    assert len({c.tobytes() for c in clips.values()}) == 4
    assert not list((root / "_background_noise_").iterdir())


def test_synth_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    assert synth_main([str(out), "--words", "3", "--per-word", "5", "--noise-files", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "15 clips" in printed
    assert synth_main([str(out), "--words", "3", "--per-word", "5"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert synth_main([str(out), "--words", "2", "--per-word", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["_background_noise_", "no", "yes"]


def test_synthetic_never_overwrites_other_content(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        write_synthetic_dataset(tmp_path / "mine", words=2, per_word=2, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

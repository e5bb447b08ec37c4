"""data.negatives: audio without the keywords as _unknown_ windows, split by the hash rule, packed exactly."""
import numpy as np
import pytest
import soundfile as sf
from support import SHARED

from sctrain.config import DataConfig, load_config
from sctrain.data.hashsplit import which_set
from sctrain.data.pack import load_dataset
from sctrain.data.speechcommands import DatasetError, scan_dataset, word_folders

SAMPLE = SHARED / "data" / "speech_commands_v001_sample"
KEYWORDS = ["down", "go", "left", "no", "right", "stop", "up", "yes"]


def test_the_issue_command_line_parses():
    cfg = load_config("configs/kws.yaml", [f"data.negatives=[{SAMPLE}]"])
    assert cfg.data.negatives == [str(SAMPLE)]


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="the shared v0.01 sample is absent")
def test_a_word_layout_of_other_words_becomes_unknown(synthetic_root, caplog):
    caplog.set_level("INFO")
    words = word_folders(synthetic_root)  # not _background_noise_, nor a pack cache other tests left there
    index = scan_dataset(synthetic_root, "keywords", silence=False, negatives=[str(SAMPLE)])
    assert index.labels == [*words, "_unknown_"]  # every word folder is a keyword: _unknown_ comes from negatives
    windows = [c for clips in index.splits.values() for c in clips if c.window]
    sample_words = {p.parent.name for p in SAMPLE.rglob("*.wav")}
    assert {c.path.split("/")[-2] for c in windows} == sample_words - set(words)  # keyword folders left out
    two = words[:2]
    index = scan_dataset(synthetic_root, "keywords", keywords=two, silence=False, negatives=[str(SAMPLE)])
    left_in = {c.path.split("/")[-2] for clips in index.splits.values() for c in clips if c.window}
    assert left_in == sample_words - set(two)  # only the keywords' folders are left out now
    assert "left out 2 folders named like a keyword" in caplog.text
    for split, clips in index.splits.items():  # each file in its speaker's split, as TensorFlow's rule says
        expected = {"train": "training", "validation": "validation", "test": "testing"}[split]
        assert all(which_set(c.path.rsplit("/", 1)[-1]) == expected for c in clips if c.window)


def test_a_long_recording_at_another_rate_packs_to_its_windows(synthetic_root, tmp_path):
    # 3.6 s of stereo 44.1 kHz: windows at 0, 1, 2 s and a 0.6 s tail (kept: >= 0.5 s), resampled to 16 kHz.
    rate, seconds, freq = 44100, 3.6, 440.0
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    folder = tmp_path / "podcasts"
    folder.mkdir()
    name = "talk0_nohash_0.flac"  # the hash rule puts it in training
    sf.write(folder / name, np.stack([tone, tone], 1), rate)
    cfg = DataConfig(root=str(synthetic_root), task="keywords", silence=False, negatives=[str(folder)],
                     cache_dir=str(tmp_path / "cache"), download=False)
    data = load_dataset(cfg, progress=False)
    split = {"training": "train", "validation": "validation", "testing": "test"}[which_set(name)]
    part = data.split(split)
    rows = [i for i, f in enumerate(part.files) if f.endswith(name)]
    assert len(rows) == 4 and part.offsets[rows].tolist() == [0, 16000, 32000, 48000]
    assert all(part.labels[r] == data.labels.index("_unknown_") for r in rows)
    # Against the tone written at 16 kHz directly (independent of the resampler), away from the file's edges.
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(64000) / 16000)
    got = np.concatenate([part.audio[r] for r in rows]).astype(np.float64) / 32768
    inner = slice(200, int(seconds * 16000) - 200)
    assert np.abs(got[inner] - expected[inner]).max() < 2e-3
    assert np.all(got[int(seconds * 16000):] == 0)  # the tail window's padding


def test_bad_negatives_are_one_line_errors(synthetic_root, tmp_path):
    with pytest.raises(DatasetError, match="data.negatives: no such file or folder: .*nowhere"):
        scan_dataset(synthetic_root, "keywords", negatives=[str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .wav/.flac/.ogg audio in .*empty"):
        scan_dataset(synthetic_root, "keywords", negatives=[str(tmp_path / "empty")])
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    sf.write(tmp_path / "talk1_nohash_0.wav", np.zeros(16000), 16000)  # its hash says testing
    with pytest.raises(DatasetError, match="no data.negatives file is in the training split"):
        scan_dataset(synthetic_root, "keywords", negatives=[str(tmp_path / "talk1_nohash_0.wav")])
    with pytest.raises(DatasetError, match="cannot read .*junk.wav as audio"):
        scan_dataset(synthetic_root, "keywords", negatives=[str(tmp_path / "junk.wav")])
    with pytest.raises(Exception, match="data.negatives"):
        DataConfig(negatives="not a list")

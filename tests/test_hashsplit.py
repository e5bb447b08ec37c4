"""The reference hash split: the published formula by hand, speaker grouping, proportions, the list writer."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from sctrain.data.hashsplit import MAX_NUM_WAVS_PER_CLASS, hash_percentage, which_set, write_split_lists
from sctrain.data.speechcommands import DatasetError, scan_dataset


def by_hand(speaker: str) -> float:
    value = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    return (value % (2**27)) * (100.0 / (2**27 - 1))


@pytest.mark.parametrize("name", ["0ab3b47d_nohash_0.wav", "yes/0ab3b47d_nohash_4.wav", "/x/y/bobby_nohash_1.wav",
                                  "no_nohash_here_nohash_2.wav", "plainname.wav"])
def test_percentage_is_the_published_formula(name):
    speaker = name.rsplit("/", 1)[-1]
    speaker = speaker[: speaker.index("_nohash_")] if "_nohash_" in speaker else speaker
    assert MAX_NUM_WAVS_PER_CLASS == 134_217_727
    assert hash_percentage(name) == by_hand(speaker)
    expected = "validation" if by_hand(speaker) < 10 else "testing" if by_hand(speaker) < 20 else "training"
    assert which_set(name) == expected
    # Other percentages move the boundaries only.
    p = by_hand(speaker)
    assert which_set(name, 30, 30) == ("validation" if p < 30 else "testing" if p < 60 else "training")


def test_literal_values():
    # 0ab3b47d: SHA-1 092cb82e...; its low 27 bits / (2**27 - 1) = 9.13 %; the mini set's
    # validation_list.txt (made by the dataset's own rule) lists this speaker.
    assert hashlib.sha1(b"0ab3b47d").hexdigest() == "092cb82ed458ea624d8c536a329241fa00bafe83"
    assert hash_percentage("down/0ab3b47d_nohash_0.wav") == pytest.approx(9.130575575907345, abs=1e-12)
    assert which_set("down/0ab3b47d_nohash_0.wav") == "validation"
    assert which_set("go/096456f9_nohash_1.wav") == "testing"  # 19.85 %: just inside the test band
    assert which_set("go/096456f9_nohash_1.wav", 10, 9.8) == "training"
    assert which_set("down/00b01445_nohash_1.wav") == "training"  # 93.06 %


def test_one_speaker_one_split_and_proportions():
    rng = np.random.default_rng(0)
    speakers = [f"{rng.integers(2**32):08x}" for _ in range(20000)]
    for s in speakers[:200]:
        assert len({which_set(f"{w}/{s}_nohash_{n}.wav") for w in ("yes", "no", "up") for n in range(3)}) == 1
    splits = [which_set(f"{s}_nohash_0.wav") for s in speakers]
    share = {k: splits.count(k) / len(splits) for k in ("validation", "testing", "training")}
    # 20,000 draws: the binomial standard deviation of a 10 % share is 0.2 points.
    assert abs(share["validation"] - 0.10) < 0.01 and abs(share["testing"] - 0.10) < 0.01, share
    assert abs(share["training"] - 0.80) < 0.012, share


def test_mini_set_validation_list_follows_the_rule(mini_root):
    listed = set((mini_root / "validation_list.txt").read_text().split())
    clips = sorted(p.relative_to(mini_root).as_posix() for p in mini_root.glob("[!_]*/*.wav"))
    assert {c for c in clips if which_set(c) == "validation"} == listed


def test_write_split_lists(synthetic_root, tmp_path):
    root = tmp_path / "sc"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".sctrain_cache"))
    with pytest.raises(DatasetError, match="already exists"):
        write_split_lists(root)
    (root / "validation_list.txt").unlink()
    (root / "testing_list.txt").unlink()
    n_val, n_test = write_split_lists(root)
    val = (root / "validation_list.txt").read_text().splitlines()
    test = (root / "testing_list.txt").read_text().splitlines()
    assert (len(val), len(test)) == (n_val, n_test) and n_val + n_test > 0
    assert val == sorted(val) and test == sorted(test)
    assert all(which_set(p) == "validation" and (root / p).is_file() for p in val)
    assert all(which_set(p) == "testing" and (root / p).is_file() for p in test)
    everything = sorted(p.relative_to(root).as_posix() for p in root.glob("[!_]*/*.wav"))
    assert sorted(val + test) == [p for p in everything if which_set(p) != "training"]
    assert not list(root.glob(".*.tmp*")), "temporary files left behind"
    index = scan_dataset(root, "all")  # the layout is complete again
    assert len(index.splits["validation"]) == n_val and len(index.splits["test"]) == n_test
    assert write_split_lists(root, overwrite=True) == (n_val, n_test)


def test_write_split_lists_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        write_split_lists(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no word folders"):
        write_split_lists(tmp_path)

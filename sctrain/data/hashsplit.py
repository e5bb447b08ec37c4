"""The Speech Commands reference split: a clip's partition from a hash of its speaker's name.

The formula is the one in TensorFlow's ``tensorflow/examples/speech_commands/input_data.py``
(``which_set``), with which the dataset's own ``validation_list.txt`` / ``testing_list.txt`` were made:
everything from ``_nohash_`` on is dropped from the file name, so all clips of one speaker share a
partition, and the SHA-1 of the rest maps to a percentage. It depends on nothing but the name, so a clip
keeps its partition as clips are added. :func:`write_split_lists` gives a folder of ``<word>/*.wav``
without list files the two lists that :func:`sctrain.data.speechcommands.scan_dataset` reads.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from sctrain.data.speechcommands import LIST_FILES, DatasetError
from sctrain.utils import atomic_write

# 2**27 - 1: the reference's "more clips per class than there will ever be", the modulus of the hash.
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
_NOHASH = re.compile(r"_nohash_.*$")


def hash_percentage(filename: str | os.PathLike) -> float:
    """The reference's value in [0, 100] for ``filename`` (only its base name before ``_nohash_`` counts)."""
    speaker = _NOHASH.sub("", os.path.basename(os.fspath(filename)))
    digest = hashlib.sha1(speaker.encode("utf-8")).hexdigest()
    return (int(digest, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)


def which_set(filename: str | os.PathLike, validation_percentage: float = 10,
              testing_percentage: float = 10) -> str:
    """``'validation'``, ``'testing'`` or ``'training'``, as TensorFlow's ``input_data.which_set``."""
    percentage = hash_percentage(filename)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def write_split_lists(root: str | os.PathLike, validation_percentage: float = 10, testing_percentage: float = 10,
                      overwrite: bool = False) -> tuple[int, int]:
    """Write ``validation_list.txt`` and ``testing_list.txt`` (sorted ``word/file.wav`` lines) for the word
    folders under ``root``; returns ``(n_validation, n_testing)``.

    Refuses (:class:`DatasetError`) to replace existing lists unless ``overwrite``: the dataset's own lists
    are the reference, and a regenerated pair would differ from them wherever they were edited by hand.
    Each file is written to a temporary name and renamed, so a reader never sees half a list.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    paths = {split: root / name for split, name in LIST_FILES.items()}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise DatasetError(f"{existing[0]} already exists; pass overwrite=True to regenerate the split lists")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not words:
        raise DatasetError(f"no word folders in {root}: expected <word>/<speaker>_nohash_<n>.wav")
    listed: dict[str, list[str]] = {"validation": [], "test": []}
    for word in words:
        for entry in os.scandir(root / word):
            if entry.is_file() and entry.name.lower().endswith(".wav"):
                split = which_set(entry.name, validation_percentage, testing_percentage)
                if split != "training":
                    listed["validation" if split == "validation" else "test"].append(f"{word}/{entry.name}")
    for split, path in paths.items():
        text = "".join(f"{rel}\n" for rel in sorted(listed[split])).encode()
        atomic_write(path, lambda f, text=text: f.write(text))
    return len(listed["validation"]), len(listed["test"])

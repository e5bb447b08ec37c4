"""The Speech Commands reference split: a clip's partition from a hash of its speaker's name.

The formula is the one in TensorFlow's ``tensorflow/examples/speech_commands/input_data.py``
(``which_set``), with which the dataset's own ``validation_list.txt`` / ``testing_list.txt`` were made:
everything from ``_nohash_`` on is dropped from the file name, so all clips of one speaker share a
partition, and the SHA-1 of the rest maps to a percentage. It depends on nothing but the name, so a clip
keeps its partition as clips are added. :func:`write_split_lists` gives a folder of ``<word>/*.wav``
without list files the two lists that :func:`sctrain.data.speechcommands.scan_dataset` reads;
:func:`ensure_split_lists` does so on the way to training (and keeps lists it wrote up to date).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from sctrain.data.speechcommands import LIST_FILES, DatasetError, is_writable, word_clips
from sctrain.utils import atomic_write

log = logging.getLogger(__name__)

# Beside lists that ensure_split_lists wrote: they are ours to rewrite when clips come or go (lists without
# it are the dataset's own and never touched).
WRITTEN_MARKER = ".sctrain_split_lists"
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


def reference_lists(root: str | os.PathLike, validation_percentage: float = 10,
                    testing_percentage: float = 10) -> dict[str, str]:
    """The text of ``validation_list.txt`` / ``testing_list.txt`` (by split: sorted ``word/file.wav`` lines)
    that :func:`which_set` gives the word folders under ``root``."""
    listed: dict[str, list[str]] = {"validation": [], "test": []}
    for clips in word_clips(Path(root)).values():
        for rel in clips:
            split = which_set(rel.split("/", 1)[1], validation_percentage, testing_percentage)
            if split != "training":
                listed["validation" if split == "validation" else "test"].append(rel)
    return {split: "".join(f"{rel}\n" for rel in sorted(paths)) for split, paths in listed.items()}


def write_split_lists(root: str | os.PathLike, validation_percentage: float = 10, testing_percentage: float = 10,
                      overwrite: bool = False, out_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """Write ``validation_list.txt`` and ``testing_list.txt`` (sorted ``word/file.wav`` lines) for the word
    folders under ``root`` into ``out_dir`` (default ``root``); returns ``(n_validation, n_testing)``.

    Refuses (:class:`DatasetError`) to replace existing lists unless ``overwrite``: the dataset's own lists
    are the reference, and a regenerated pair would differ from them wherever they were edited by hand.
    Each file is written to a temporary name and renamed, so a reader never sees half a list.
    """
    out = Path(out_dir if out_dir is not None else root)
    paths = {split: out / name for split, name in LIST_FILES.items()}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise DatasetError(f"{existing[0]} already exists; pass overwrite=True to regenerate the split lists")
    texts = reference_lists(root, validation_percentage, testing_percentage)
    for split, path in paths.items():
        data = texts[split].encode()
        atomic_write(path, lambda f, data=data: f.write(data))
    return texts["validation"].count("\n"), texts["test"].count("\n")


def ensure_split_lists(root: str | os.PathLike, fallback: str | os.PathLike) -> Path:
    """The folder whose split lists :func:`sctrain.data.speechcommands.scan_dataset` should read for ``root``.

    ``root``'s own lists when it has both (and they are not ours). Otherwise the reference hash split's
    lists, written (one warning) into ``root``, or into ``fallback`` when ``root`` is read-only, and
    rewritten there only when the clips changed: an unchanged list keeps the packed cache valid.
    """
    root, fallback = Path(root), Path(fallback)
    present = [name for name in LIST_FILES.values() if (root / name).is_file()]
    ours = (root / WRITTEN_MARKER).is_file()
    if len(present) == len(LIST_FILES) and not ours:
        return root
    if present and not ours:  # half a pair by hand: completing it by the hash could contradict it
        missing = next(name for name in LIST_FILES.values() if name not in present)
        raise DatasetError(f"{root} has {present[0]} but no {missing}: add it, or remove both to have the "
                           f"reference hash split written")
    folder = root if is_writable(root) else fallback
    texts = reference_lists(root)
    current = {split: _read(folder / name) for split, name in LIST_FILES.items()}
    if current != texts:
        write_split_lists(root, overwrite=True, out_dir=folder)
        atomic_write(folder / WRITTEN_MARKER, lambda f: f.write(f"lists for {root.resolve()}\n".encode()))
        log.warning("%s has no %s: wrote them to %s by TensorFlow's reference hash split (speakers kept together; "
                    "10 %% validation, 10 %% test)", root, " / ".join(LIST_FILES.values()), folder)
    return folder


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None

"""Clips from more than one folder: ``data.extra_roots`` (e.g. TTS keywords) beside ``data.root``'s own.

Every clip of an extra folder is training data (another source shares no speaker with root's validation and
test lists), named by its absolute path, as the official test clips are. ``data.root_train_clips`` keeps a
seeded handful of root's own training clips per word, for "a few real recordings and many synthetic ones".
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from sctrain.data.speechcommands import DatasetError, word_clips


def extra_clips(roots: list) -> dict[str, list[str]]:
    """Every extra folder's clips as absolute paths, by word folder (the folders' clips of one word joined)."""
    out: dict[str, list[str]] = {}
    for root in roots:
        root = Path(root).expanduser().absolute()
        try:
            files = word_clips(root)
        except DatasetError as e:
            raise DatasetError(f"data.extra_roots: {e}") from None
        for word, paths in files.items():
            out.setdefault(word, []).extend((root / p).as_posix() for p in paths)
    return out


def is_extra(path: str) -> bool:
    """Whether a training clip came from ``data.extra_roots`` (root's own clips are relative paths)."""
    return os.path.isabs(path)


def keep_root_train(files: dict[str, list[str]], split_of: dict[str, str], per_word: Optional[int],
                    seed: int) -> dict[str, list[str]]:
    """``files`` with at most ``per_word`` training clips per word (seeded choice); listed clips all stay."""
    if per_word is None:
        return files
    kept = {}
    for k, (word, paths) in enumerate(sorted(files.items())):
        train = [p for p in paths if p not in split_of]
        if len(train) > per_word:
            rng = np.random.default_rng([seed, 0x5EED, k])
            chosen = set(np.asarray(train)[rng.choice(len(train), size=per_word, replace=False)].tolist())
            train = [p for p in train if p in chosen]
        kept[word] = sorted(train + [p for p in paths if p in split_of])
    return kept


def extra_groups(files: list[str]) -> np.ndarray:
    """1 for each clip of ``files`` (a packed split's paths) from an extra folder, else 0."""
    return np.array([is_extra(f) for f in files], dtype=np.int64)

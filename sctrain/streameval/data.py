"""What a stream is built from: a packed split's clips and the split's stretch of the noise recordings."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sctrain.artifacts.labels import FILLER_LABELS, UNKNOWN
from sctrain.audio.io import read_audio
from sctrain.data.dataset import PackedDataset
from sctrain.streameval.stream import LAYOUT, Stream, build_stream

# The stretch of every noise recording each split may use: the one scan_dataset cuts that split's
# _silence_ clips from, so validation and test streams never share noise with each other or with them.
NOISE_STRETCH = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def split_clips(data: PackedDataset, split: str) -> tuple[list, list]:
    """``(keywords, unknown)``: ``(int16 audio, label)`` pairs of a packed split; _silence_ cuts are left
    out (the stream's own background plays their part)."""
    part = data.split(split)
    keywords, unknown = [], []
    for audio, label in zip(part.audio, part.labels.tolist()):
        name = data.labels[label]
        if name not in FILLER_LABELS:
            keywords.append((audio, name))
        elif name == UNKNOWN:
            unknown.append((audio, name))
    return keywords, unknown


def noise_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def noise_recordings(paths: Sequence[str | Path], split: str) -> list[np.ndarray]:
    """Float32 16 kHz mono recordings, each cut to ``split``'s stretch of it (see :data:`NOISE_STRETCH`)."""
    lo, hi = NOISE_STRETCH[split]
    out = []
    for path in paths:
        rec = read_audio(path)
        out.append(rec[int(lo * len(rec)): int(hi * len(rec))])
    return [r for r in out if len(r)]


def split_stream(data: PackedDataset, split: str, minutes: float, seed: int,
                 noise: Sequence[str | Path] | None = None) -> Stream:
    """A ``minutes`` stream of ``split``'s clips (:data:`LAYOUT`) over its stretch of ``noise`` (default: the
    dataset's background recordings); ``ValueError`` when the split has no keyword clips."""
    keywords, unknown = split_clips(data, split)
    if not keywords:
        raise ValueError(f"the {split} split of {data.meta['root']} holds no keyword clips")
    paths = noise if noise is not None else [Path(data.meta["root"]) / p for p in data.meta["background_files"]]
    seconds = [minutes * 60 * share for share in LAYOUT[bool(unknown)]]
    return build_stream(keywords, noise_recordings(paths, split), seconds[0], seconds[1], unknown, seconds[2],
                        seed=seed)

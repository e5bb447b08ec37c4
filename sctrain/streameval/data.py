"""What a stream is built from: a packed split's clips and the split's stretch of the noise recordings
(:data:`~sctrain.data.speechcommands.NOISE_STRETCH`: training's noise augmentation and _silence_ cuts use
another stretch, so the streams hold no noise the model trained on)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sctrain.artifacts.labels import FILLER_LABELS, UNKNOWN
from sctrain.audio.io import AUDIO_SUFFIXES, read_audio
from sctrain.data.dataset import PackedDataset
from sctrain.data.speechcommands import NOISE_STRETCH
from sctrain.streameval.mixed_stream import LAYOUT, Stream, build_stream


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


def negative_streams(data: PackedDataset, split: str, minutes: float, seed: int,
                     noise: Sequence[str | Path] | None = None, chunk_minutes: float = 10.0) -> list[Stream]:
    """``minutes`` of audio without a keyword, in streams of ``chunk_minutes`` (memory stays flat over hours):
    :func:`sctrain.streameval.generated.negative_audio` from ``split``'s stretch of the noise recordings and its
    clips. Recordings and coloured noise are "noise" stretches of the stream, babble and the split's ``_unknown_``
    clips (when it has them) "unknown" ones: the report's noise alone and non-keyword speech."""
    from sctrain.streameval.generated import negative_audio

    keywords, unknown = split_clips(data, split)
    paths = noise if noise is not None else [Path(data.meta["root"]) / p for p in data.meta["background_files"]]
    recordings = noise_recordings(paths, split)
    streams, left, i = [], minutes * 60.0, 0
    while left >= 1.0:
        seconds = min(left, chunk_minutes * 60.0)
        wave, sections = negative_audio(seconds, recordings, [a for a, _ in keywords], [a for a, _ in unknown],
                                        seed=seed * 1000 + i)
        streams.append(Stream(wave, [], sections))
        left -= seconds
        i += 1
    return streams


def file_streams(paths: Sequence[str | Path], chunk_minutes: float = 10.0) -> list[Stream]:
    """The audio of ``paths`` (any rate and channels; e.g. ``streameval --negatives``), end to end, in streams
    of at most ``chunk_minutes``: every second an "unknown" stretch (audio that is not a keyword, of whatever
    kind). The caller vouches that the model never trained on it."""
    chunk, streams, pending = int(chunk_minutes * 60 * 16000), [], []
    for path in paths:
        pending.append(read_audio(path))
        wave = np.concatenate(pending)
        while len(wave) >= chunk:
            streams.append(Stream(wave[:chunk], [], [("unknown", 0.0, chunk / 16000)]))
            wave = wave[chunk:]
        pending = [wave]
    wave = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if len(wave) >= 16000:
        streams.append(Stream(wave, [], [("unknown", 0.0, len(wave) / 16000)]))
    return streams

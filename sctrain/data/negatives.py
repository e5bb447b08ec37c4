"""Negatives: audio without the keywords (``data.negatives``), cut into 1 s windows of ``_unknown_``.

Any folder or file of any length, sample rate and channel count: other people's words in a SpeechCommands
layout, an audiobook corpus, podcasts, music, recordings of a room. Each file goes whole to one split by
the project's hash split of its name (TensorFlow's reference rule: a ``<speaker>_nohash_<n>`` clip follows
its speaker, so a speaker's words never reach two splits), and every 1 s window of it becomes an
``_unknown_`` clip of that split: training learns from the training files, and the validation and test
streams play the others, which the model never heard.

In a folder laid out by word, the folders named like a keyword are left out (a log line says so), and so
is ``_background_noise_``: the dataset's own noise recordings are split in time instead
(:data:`sctrain.data.speechcommands.NOISE_STRETCH`), and a second copy here would put the held-out stretch
into training.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import AUDIO_SUFFIXES, AudioError, decode_error, read_audio, to_int16
from sctrain.data.speechcommands import BACKGROUND_DIR

log = logging.getLogger(__name__)

# A last window shorter than this is dropped rather than padded: half a second of padding is not audio.
MIN_TAIL_S = 0.5


class NegativesError(ValueError):
    """A ``data.negatives`` entry that cannot be used; the message is one line naming it."""


def negative_files(entries: Sequence[str | Path], keywords: Sequence[str], what: str = "data.negatives") -> list[Path]:
    """The audio files of ``entries`` (files, or folders searched recursively), sorted, without the
    folders named like a keyword or ``_background_noise_``; ``what`` names the setting in messages."""
    files, left_out = [], set()
    keywords = set(keywords)
    for entry in entries:
        path = Path(entry)
        if path.is_file():
            files.append(path)
            continue
        if not path.is_dir():
            raise NegativesError(f"{what}: no such file or folder: {path}")
        found = 0
        for p in sorted(path.rglob("*")):
            if not (p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
                continue
            inside = p.relative_to(path).parts[:-1]
            skip = next((d for d in inside if d in keywords or d == BACKGROUND_DIR or d.startswith(".")), None)
            if skip is not None:
                left_out.add(str(path / skip))
                continue
            files.append(p)
            found += 1
        if not found:
            raise NegativesError(f"{what}: no {'/'.join(AUDIO_SUFFIXES)} audio in {path} "
                                 f"(besides folders named like a keyword or {BACKGROUND_DIR})")
    if left_out:
        log.info("%s: left out %d folders named like a keyword or %s: %s", what, len(left_out),
                 BACKGROUND_DIR, ", ".join(sorted(left_out)))
    return sorted(set(files))


def window_offsets(path: Path) -> list[int]:
    """First samples (at 16 kHz) of the file's 1 s windows, end to end; a short last one kept from
    ``MIN_TAIL_S`` (a 1 s clip is one window)."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile's error kinds vary; all mean "not audio"
        raise NegativesError(f"data.negatives: cannot read {path} as audio ({decode_error(e)})") from None
    samples = math.floor(info.frames * SAMPLE_RATE / info.samplerate)
    count = samples // CLIP_SAMPLES + (samples % CLIP_SAMPLES >= MIN_TAIL_S * SAMPLE_RATE)
    return [i * CLIP_SAMPLES for i in range(max(count, 1 if samples > 0 else 0))]


@lru_cache(maxsize=1)
def _decoded(path: str) -> np.ndarray:
    # Windows are packed in file order, so one decoded file serves all of its windows in turn.
    return read_audio(path)


def read_window(path: str | Path, offset: int) -> np.ndarray:
    """int16 ``CLIP_SAMPLES`` of ``path`` from 16 kHz sample ``offset``, mixed down and resampled (the
    whole file is decoded once, then reused), zero-padded at the end."""
    wave = _decoded(str(path))
    if offset >= len(wave):
        raise AudioError(f"audio file {path}: offset {offset} past the end", f"offset {offset} past the end")
    out = np.zeros(CLIP_SAMPLES, dtype=np.int16)
    piece = wave[offset:offset + CLIP_SAMPLES]
    out[:len(piece)] = to_int16(piece)
    return out

"""Reading audio files: the one reader that packing, prediction, export and streaming all use.

Every file is decoded as float32 by libsndfile, which scales each stored format (PCM 8/16/24/32, float,
double; WAV, FLAC, OGG, ...) into [-1, 1]. Asking libsndfile for int16 instead would be faster, but it
does not scale float files on that call: a float WAV would come back as zeros. Packing converts the float
samples to int16 itself (:func:`to_int16`), so the packed clips hold what :func:`read_audio` returns, to
int16 rounding.

This module imports no torch at module level: the packing processes import it to decode.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from sctrain.audio.constants import CLIP_SAMPLES, INT16_SCALE, SAMPLE_RATE
from sctrain.utils import first_line

# Files of recordings the project reads beyond dataset clips (noise, impulse responses, negatives): what
# libsndfile decodes and users have.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """An audio file that cannot be used (missing, not audio, empty); the message is one line naming it.

    ``reason`` is the same without the file's name, for lists that name the file themselves.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def decode_error(e: BaseException) -> str:
    """A short one-line reason; libsndfile's own text, without the path the caller names anyway."""
    return first_line(e).rstrip(".")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"audio file not found: {path}", "file not found")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file", "a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)", "empty (0 bytes)")


def read_source(path: str | Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """The file as stored: float32 ``[frames, channels]`` in [-1, 1] and its sample rate, from sample
    ``start`` (``frames=-1``: to the end); :class:`AudioError` if the file is unusable."""
    path = Path(path)
    _check_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            if start >= f.frames > 0:
                reason = f"offset {start} past the end ({f.frames} samples)"
                raise AudioError(f"audio file {path}: {reason}", reason)
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
            rate = f.samplerate
    except AudioError:
        raise
    except Exception as e:  # noqa: BLE001 - libsndfile's error kinds vary; every one means "not usable audio"
        raise AudioError(f"cannot read {path} as audio ({decode_error(e)})", decode_error(e)) from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples", "empty")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} holds NaN or infinite samples", "NaN or infinite samples")
    return data, int(rate)


def to_model_rate(data: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[frames]`` or ``[frames, channels]`` float audio -> mono float32 at ``target_rate``."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)  # mixdown: the model hears one channel, and averaging keeps the level
    if sample_rate != target_rate:
        import torch
        import torchaudio.functional as AF

        # Band-limited sinc interpolation (anti-aliased when downsampling), exact rational ratio.
        data = AF.resample(torch.from_numpy(np.ascontiguousarray(data)), int(sample_rate), target_rate).numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def read_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file libsndfile reads as mono float32 in [-1, 1] at ``target_rate`` (:class:`AudioError` if unusable)."""
    data, rate = read_source(path)
    return to_model_rate(data, rate, target_rate)


BLOCK_S = 10.0  # seconds of audio per block of read_audio_blocks: memory bound by this, never by the file


def _resample_margin(orig: int, new: int) -> int:
    """Input samples around a block that torchaudio's sinc resampler (``lowpass_filter_width=6``,
    ``rolloff=0.99``) reads for the block's outputs, rounded up to whole periods of ``orig`` (the reduced
    rate), plus one period spare: its kernel spans ``width`` samples either side of one period."""
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    return orig * (-(-(width + orig) // orig) + 1)


def read_audio_blocks(path: str | Path, target_rate: int = SAMPLE_RATE,
                      block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
    """:func:`read_audio` as successive mono float32 blocks of about ``block_s`` seconds, so that hours of audio
    take the memory of one block. Joined, the blocks are :func:`read_audio`'s samples: the same values when the
    file is at ``target_rate``; otherwise each block is resampled with ``margin`` samples of its neighbours
    around it and cut on the resampler's period, which gives the whole-file resampling to float rounding
    (tests/test_reliability.py checks both). :class:`AudioError` if the file is unusable, also mid-file.
    """
    path = Path(path)
    _check_file(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # noqa: BLE001 - as read_source: every libsndfile error means "not usable audio"
        raise AudioError(f"cannot read {path} as audio ({decode_error(e)})", decode_error(e)) from None
    with f:
        rate = int(f.samplerate)
        g = math.gcd(rate, target_rate)
        orig, new = rate // g, target_rate // g
        step = orig * max(1, round(block_s * rate / orig))  # input samples per block, whole periods
        margin = 0 if rate == target_rate else _resample_margin(orig, new)
        buf = np.zeros(0, dtype=np.float32)  # mono input samples from `lo` on
        lo = pos = 0  # first input sample in buf; first input sample of the next block (multiples of orig)
        eof = False
        while not eof:
            want = pos + step + margin - (lo + len(buf))
            try:
                data = f.read(want, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001
                raise AudioError(f"cannot read {path} as audio ({decode_error(e)})", decode_error(e)) from None
            eof = len(data) < want
            if not np.isfinite(data).all():
                raise AudioError(f"audio file {path} holds NaN or infinite samples", "NaN or infinite samples")
            buf = np.concatenate([buf, data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]])
            if pos == 0 and eof and not len(buf):
                raise AudioError(f"audio file {path} holds no samples", "empty")
            end = lo + len(buf) if eof else pos + step  # input samples of this block: [pos, end)
            if rate == target_rate:
                block = buf[pos - lo: end - lo]
            else:
                out = to_model_rate(buf, rate, target_rate)  # output 0 is input `lo`: lo is whole periods
                first = (pos - lo) // orig * new
                block = out[first: first + -(-(end - pos) * new // orig)]
            if len(block):
                yield np.ascontiguousarray(block)
            pos = end
            keep = max(0, pos - margin)
            buf, lo = buf[keep - lo:], keep


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16, rounded to the nearest step and clipped at full scale."""
    return np.clip(np.rint(np.asarray(wave, dtype=np.float64) * INT16_SCALE), -32768, 32767).astype(np.int16)


def read_clip(path: str | Path, offset: int = 0, samples: int = CLIP_SAMPLES) -> np.ndarray:
    """``samples`` int16 samples of a 16 kHz mono file from ``offset``, zero-padded at the end (packing).

    A file in another format is an :class:`AudioError`: a dataset clip that is not 16 kHz mono is a
    preparation mistake worth stopping for (``data.skip_bad_clips`` skips it instead).
    """
    data, rate = read_source(path, offset, samples)
    reason = (f"sample rate {rate} Hz, not {SAMPLE_RATE}" if rate != SAMPLE_RATE else
              f"{data.shape[1]} channels, not mono" if data.shape[1] != 1 else None)
    if reason:
        raise AudioError(f"audio file {path}: {reason}", reason)
    out = np.zeros(samples, dtype=np.int16)
    out[: len(data)] = to_int16(data[:, 0])
    return out

"""One split's clips read straight from the dataset folder, without packing: for the few hundred clips that
export (int8 calibration) and the deployment benchmark need from a checkpoint's dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sctrain.audio.constants import CLIP_SAMPLES, INT16_SCALE
from sctrain.audio.io import read_clip, to_int16
from sctrain.data.pack import scan_config
from sctrain.data.speechcommands import Clip, DatasetError, is_layout


def split_clips(data_cfg, split: str, limit: int = 0) -> tuple[list[Clip], Path]:
    """The clips of ``split`` ('train', 'validation', 'test') as ``data_cfg`` (a ``DataConfig``) scans them, in
    the same labels and order the packed cache has, and the root they are relative to; ``limit > 0``
    keeps that many, spread evenly over the split (so every label is represented)."""
    root = Path(data_cfg.root)
    if not is_layout(root):
        raise DatasetError(f"dataset folder not found or not in the Speech Commands layout: {root}")
    index = scan_config(data_cfg, root, Path(data_cfg.cache_dir) if data_cfg.cache_dir else None, progress=False)
    clips = index.splits[split]
    if 0 < limit < len(clips):
        clips = [clips[i] for i in np.linspace(0, len(clips) - 1, limit).round().astype(int)]
    return clips, root


def decode_clips(clips: list[Clip], root: Path) -> np.ndarray:
    """``[N, 16000]`` float32 in [-1, 1]: each clip as packing decodes it (int16, the _silence_ cuts' gain
    applied), then / 32768 as the training front end sees it."""
    out = np.empty((len(clips), CLIP_SAMPLES), dtype=np.float32)
    for i, clip in enumerate(clips):
        path = Path(clip.path) if Path(clip.path).is_absolute() else root / clip.path
        audio = read_clip(path, clip.offset)
        if clip.gain != 1.0:
            audio = to_int16(audio / INT16_SCALE * clip.gain)
        out[i] = audio / INT16_SCALE
    return out


def split_audio(data_cfg, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_clips` decoded: audio ``[N, 16000]`` float32 and labels ``[N]`` int64."""
    clips, root = split_clips(data_cfg, split, limit)
    return decode_clips(clips, root), np.array([c.label for c in clips], dtype=np.int64)

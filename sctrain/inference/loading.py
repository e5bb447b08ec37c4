"""Inference on files: a ``best_sc.pt`` as a raw-audio classifier, any audio file in, top-k labels out.

Files of any sample rate and channel count are mixed down to mono and resampled to the model's 16 kHz;
files of any length are scored as 1 s windows (shorter ones zero-padded at the end, as the packed
training clips are), and a file's answer is its most confident window.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .checkpoint import CheckpointError, load_best
from .config import Config, ConfigError, config_from_dict
from .data.speechcommands import CLIP_SAMPLES, SAMPLE_RATE, SILENCE, UNKNOWN, decode_error
from .features import LogMel
from .model import AudioClassifier, KWSNet, build_model

# Labels that mean "no keyword here": a long file's answer comes from a window that heard a word when
# one did, and streaming never reports them as detections.
FILLER_LABELS = (SILENCE, UNKNOWN)
# Hop between the 1 s windows of a file longer than 1 s: a word (<= 1 s) lies wholly inside some window
# give or take 125 ms, about the time shift the model was trained to tolerate.
FILE_HOP = CLIP_SAMPLES // 4


class AudioError(ValueError):
    """An audio file that cannot be used (missing, not audio, empty); the message is one line naming it."""


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the raw-audio classifier (eval mode, CPU) and what it needs."""

    classifier: AudioClassifier
    labels: list[str]
    config: Config
    path: Path
    metrics: dict = field(default_factory=dict)

    @property
    def net(self) -> KWSNet:
        return self.classifier.net

    @property
    def features(self) -> LogMel:
        return self.classifier.features

    @cached_property
    def fast_net(self) -> "FastNet":
        return FastNet(self.net)

    @cached_property
    def fast_classifier(self) -> AudioClassifier:
        """The same function as :attr:`classifier`, faster on the CPU (see :class:`FastNet`)."""
        return AudioClassifier(self.features, self.fast_net).eval()


class FastNet(nn.Module):
    """An inference copy of a :class:`KWSNet` for the CPU, same logits up to float rounding (eval only):

    - BatchNorm folded into the preceding convolutions: one pass over each activation map fewer;
    - channels-last activations: PyTorch's oneDNN convolutions and, above all, its max-pooling run several
      times faster in that layout than in NCHW at batch 1;
    - except the first convolution (one input channel), which is faster in NCHW: its output is converted
      once, before pooling.

    ``python -m sctrain.bench latency`` measures it against the as-trained module ("eager-fast" vs "eager").
    """

    def __init__(self, net: KWSNet) -> None:
        super().__init__()
        net = copy.deepcopy(net).eval()
        blocks = [m for m in net.modules() if isinstance(m, nn.Sequential)]
        for block in blocks:
            layers = list(block)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d):
                    block[i] = fuse_conv_bn_eval(layers[i], layers[i + 1])
                    block[i + 1] = nn.Identity()
        net = net.to(memory_format=torch.channels_last)
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        if first.in_channels == 1:
            first.weight.data = first.weight.data.contiguous()
            block = next(b for b in blocks if first in list(b))
            block.insert(list(block).index(first) + 1, _ChannelsLast())
        self.first_nchw = first.in_channels == 1
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        layout = torch.contiguous_format if self.first_nchw else torch.channels_last
        return self.net(x.contiguous(memory_format=layout))


class _ChannelsLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the :class:`AudioClassifier` a ``best_sc.pt`` was trained as; :class:`CheckpointError` if it
    is missing, corrupt, from another version, or its weights do not fit the model its config describes."""
    path = Path(path)
    ckpt = load_best(path)
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read ({e})") from None
    labels = ckpt["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"checkpoint {path} has no valid label list")
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"checkpoint {path}: 'model' is not a state dict")
    net = build_model(cfg.model, len(labels))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing/unexpected keys or shapes: another model family or version
        first = str(e).strip().splitlines()
        reason = " ".join(first[1:2] or first[:1]).strip()[:160]
        raise CheckpointError(f"checkpoint {path}: weights do not fit a width-{cfg.model.width} KWSNet "
                              f"with {len(labels)} labels ({reason})") from None
    classifier = AudioClassifier(LogMel(cfg.features, SAMPLE_RATE), net).eval()
    metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), dict) else {}
    return LoadedModel(classifier, list(labels), cfg, path, metrics)


# ------------------------------------------------------------------------------------------------ audio

def to_model_rate(data: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[frames]`` or ``[frames, channels]`` float audio -> mono float32 at ``target_rate``."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)  # mixdown: the model hears one channel, and averaging keeps the level
    if sample_rate != target_rate:
        # Band-limited sinc interpolation (anti-aliased when downsampling), exact rational ratio.
        data = AF.resample(torch.from_numpy(np.ascontiguousarray(data)), int(sample_rate), target_rate).numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def read_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file libsndfile reads (WAV, FLAC, OGG, ...) as mono float32 in [-1, 1] at ``target_rate``.

    Raises :class:`AudioError` for a missing, unreadable, empty or non-finite file.
    """
    data, rate = read_source(path)
    return to_model_rate(data, rate, target_rate)


def read_source(path: str | Path) -> tuple[np.ndarray, int]:
    """The file as stored: float32 ``[frames, channels]`` and its sample rate; :class:`AudioError` if unusable."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile's error kinds vary; every one means "not usable audio"
        raise AudioError(f"cannot read {path} as audio ({decode_error(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} holds NaN or infinite samples")
    return data, int(rate)


def file_windows(wave: np.ndarray, size: int = CLIP_SAMPLES, hop: int = FILE_HOP) -> tuple[np.ndarray, np.ndarray]:
    """``[N, size]`` windows covering ``wave`` and their start samples; the last window ends at the end."""
    if len(wave) <= size:
        out = np.zeros((1, size), dtype=np.float32)
        out[0, : len(wave)] = wave
        return out, np.zeros(1, dtype=np.int64)
    starts = list(range(0, len(wave) - size + 1, hop))
    if starts[-1] != len(wave) - size:
        starts.append(len(wave) - size)
    starts_arr = np.asarray(starts, dtype=np.int64)
    return np.stack([wave[s: s + size] for s in starts_arr]), starts_arr


# --------------------------------------------------------------------------------------------- scoring

@torch.inference_mode()
def window_probs(classifier: torch.nn.Module, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` of ``[N, T]`` windows, in batches."""
    out = []
    for i in range(0, len(windows), batch_size):
        logits = classifier(torch.from_numpy(np.ascontiguousarray(windows[i: i + batch_size])))
        out.append(logits.float().softmax(-1).numpy())
    return np.concatenate(out)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(labels)))]
    return [{"label": labels[i], "prob": float(probs[i])} for i in order]


def best_window(probs: np.ndarray, labels: list[str]) -> int:
    """The most confident window, preferring those whose top label is a keyword rather than a filler."""
    top = probs.argmax(1)
    conf = probs.max(1)
    keyword = np.array([labels[t] not in FILLER_LABELS for t in top])
    return int(np.argmax(np.where(keyword, conf, conf - 2.0)))  # -2: any keyword window beats any filler one


def predict_wave(model: LoadedModel, wave: np.ndarray, k: int = 3) -> dict:
    """Top-k labels of a mono 16 kHz float waveform of any length (see the module docstring)."""
    windows, starts = file_windows(wave)
    probs = window_probs(model.fast_classifier, windows)
    i = best_window(probs, model.labels)
    return {"duration_s": len(wave) / SAMPLE_RATE, "windows": len(windows),
            "window_start_s": float(starts[i] / SAMPLE_RATE), "top": top_k(probs[i], model.labels, k)}


def predict_file(model: LoadedModel, path: str | Path, k: int = 3) -> dict:
    data, rate = read_source(path)
    wave = to_model_rate(data, rate)
    return {"file": str(path), "sample_rate": rate, "channels": int(data.shape[1]), **predict_wave(model, wave, k)}

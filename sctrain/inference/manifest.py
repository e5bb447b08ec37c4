"""The device manifest: one JSON beside an exported file with everything a device program needs besides the
runtime (in the spirit of ESPHome's micro_wake_word manifests), and the NumPy front end that reads it.

``<file>.manifest.json`` (written by ``python -m sctrain.export ... --manifest``) holds the model file's
name, size and SHA-256, its input, the labels, the calibrated thresholds and detector rules, the
quantization record, the parity result measured at export, and the front end as numbers: the STFT window
(``n_fft`` long), the mel filterbank ``[bins, n_mels]``, the DCT matrix for MFCCs, and the constants of the
log and the per-clip normalisation. :func:`model_input` gives the file's input for a recording (for a
features-in file, :func:`log_mel`, which computes a features-in file's input from audio with
NumPy alone, no torch, the same numbers as :class:`sctrain.audio.features.LogMel` to float32 rounding), so
an ``ai-edge-litert`` or ``onnxruntime`` client runs a WAV end to end.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

MANIFEST_FORMAT = "sctrain-manifest/1"


def manifest_path(model_file: str | Path) -> Path:
    return Path(str(model_file) + ".manifest.json")


def front_end(logmel) -> dict:
    """A :class:`LogMel`'s computation as plain numbers (JSON-ready lists)."""
    from sctrain.audio.constants import CLIP_SAMPLES
    from sctrain.audio.features import LOG_OFFSET, NORM_EPS

    s = logmel.mel.spectrogram
    left = (s.n_fft - s.win_length) // 2
    window = np.zeros(s.n_fft, dtype=np.float32)
    window[left: left + s.win_length] = s.window.numpy()
    return {"sample_rate": logmel.sample_rate, "clip_samples": CLIP_SAMPLES, "n_fft": s.n_fft,
            "hop_length": s.hop_length,
            "center": "reflect" if logmel.cfg.center else "none", "normalise": logmel.cfg.normalise,
            "power": 2.0, "log_offset": LOG_OFFSET, "norm_eps": NORM_EPS,
            "window": window.tolist(), "mel_filterbank": logmel.mel.mel_scale.fb.numpy().tolist(),
            "dct": None if logmel.dct is None else logmel.dct.numpy().tolist(),
            "layout": "[1, 1, bands, frames]"}


def write_manifest(model, model_file: Path, exported_meta: dict[str, str], parity: dict) -> Path:
    """``model_file``'s manifest, from the checkpoint (a ``LoadedModel``), the file's metadata and the parity
    result of its export check."""
    from sctrain.utils import atomic_write_text

    data = model_file.read_bytes()
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_file": model_file.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "input": exported_meta["sctrain.input"], "input_shape": json.loads(exported_meta["sctrain.input_shape"]),
        "labels": json.loads(exported_meta["sctrain.labels"]),
        "thresholds": json.loads(exported_meta.get("sctrain.thresholds") or "{}"),
        "detector": json.loads(exported_meta.get("sctrain.detector") or "{}"),
        "quantization": json.loads(exported_meta.get("sctrain.quantization") or "null"),
        "features": json.loads(exported_meta["sctrain.features"]),
        "parity_at_export": parity,
        "front_end": front_end(model.features),
    }
    out = manifest_path(model_file)
    atomic_write_text(out, json.dumps(manifest))
    return out


def read_manifest(path: str | Path) -> dict:
    manifest = json.loads(Path(path).read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an sctrain manifest (format: {manifest.get('format')!r})")
    return manifest


def one_clip(manifest: dict, wave: np.ndarray) -> np.ndarray:
    """The first ``clip_samples`` (1 s) of ``wave`` as float32 ``[1, clip_samples]``, a shorter recording
    zero-padded at its end as ``python -m sctrain.predict`` pads it: a raw-audio file's input."""
    clip = np.zeros((1, manifest["front_end"]["clip_samples"]), dtype=np.float32)
    wave = np.asarray(wave, dtype=np.float32)[: clip.shape[1]]
    clip[0, : len(wave)] = wave
    return clip


def model_input(manifest: dict, wave: np.ndarray) -> np.ndarray:
    """What the manifest's model file takes for one recording: :func:`one_clip` or its :func:`log_mel`."""
    return one_clip(manifest, wave) if manifest["input"] == "audio" else log_mel(manifest, wave)


def log_mel(manifest: dict, wave: np.ndarray) -> np.ndarray:
    """``[T]`` float audio in [-1, 1] at the manifest's sample rate -> normalised ``[1, 1, bands, frames]``
    float32 features, as :class:`LogMel` computes them (NumPy only), of the first ``clip_samples`` (1 s),
    a shorter recording zero-padded at its end as ``python -m sctrain.predict`` pads it."""
    fe = manifest["front_end"]
    clip = one_clip(manifest, wave)[0]
    n_fft, hop = fe["n_fft"], fe["hop_length"]
    half = n_fft // 2
    # torch.stft(center=True)'s padding; "none" (features.center: false): only the frames inside the clip
    wave = np.pad(clip, half, mode="reflect") if fe.get("center", "reflect") == "reflect" else clip
    count = (len(wave) - n_fft) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop][:count] * np.asarray(fe["window"],
                                                                                                 np.float32)
    spec = np.fft.rfft(frames.astype(np.float64), axis=-1)
    power = spec.real ** 2 + spec.imag ** 2
    mel = np.log(power @ np.asarray(fe["mel_filterbank"], np.float64) + fe["log_offset"])  # [frames, n_mels]
    if fe["dct"] is not None:
        mel = mel @ np.asarray(fe["dct"], np.float64)
    feats = mel
    if fe.get("normalise", "clip") == "clip":
        mean, var = mel.mean(), mel.var()
        feats = (mel - mean) / np.sqrt(var + fe["norm_eps"])
    return feats.T[None, None].astype(np.float32)

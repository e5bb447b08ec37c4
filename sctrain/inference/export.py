"""Export a checkpoint to ONNX or TorchScript (``python -m sctrain.export``), checked against PyTorch.

Two inputs (``--input``):

- ``audio`` (default): ``float32 [batch, 16000]``, 1 s of mono 16 kHz audio in [-1, 1] (int16 / 32768).
  The log-mel front end is inside the graph (the ONNX graph uses the standard ``STFT`` operator, opset
  17+), so a consumer needs nothing but the runtime.
- ``logmel``: ``float32 [batch, 1, bands, frames]``, the per-clip normalised log-mel (or MFCC) that
  :class:`sctrain.audio.features.LogMel` computes (its parameters are in the metadata), for runtimes that
  compute features themselves, e.g. incrementally in a stream.

ONNX files are exported from the module as trained (ONNX Runtime folds BatchNorm and picks layouts
itself); TorchScript files are traced from :attr:`LoadedModel.cpu_net`, the family's CPU inference copy.

Output ``logits``: ``float32 [batch, labels]``. The file's metadata (ONNX ``metadata_props``, TorchScript
``_extra_files``) carries ``sctrain.labels`` (JSON list, in logit order), ``sctrain.input``,
``sctrain.input_shape``, ``sctrain.sample_rate``, ``sctrain.features`` (JSON) and ``sctrain.thresholds``
(JSON ``{keyword: threshold}``: the per-keyword detection thresholds calibrated after training, which
:class:`sctrain.inference.streaming.StreamingDetector` uses by default; 0.5 each for a checkpoint without
calibrated ones) and ``sctrain.detector`` (JSON ``{"smooth", "refractory_ms", "filler_gate"}``: the detector
rules those thresholds hold under, :class:`sctrain.artifacts.detector.DetectorRules`). After writing, the command
runs the file (ONNX Runtime / ``torch.jit.load``) and PyTorch on real clips and fails, keeping no file, unless
every argmax agrees and the largest logit difference is within ``--atol``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.features import feature_shape
from sctrain.audio.io import read_audio
from sctrain.data.speechcommands import BACKGROUND_DIR
from sctrain.inference.events import threshold_dict
from sctrain.inference.loading import LoadedModel
from sctrain.inference.predict import file_windows
from sctrain.inference.streaming import model_rules, model_thresholds
from sctrain.utils import first_line, is_disk_full, no_space_message, temp_name

log = logging.getLogger(__name__)

EXPORT_FORMAT = "sctrain-export/1"
INPUTS = ("audio", "logmel")
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
ONNX_OPSET = 20  # STFT needs >= 17; 20 is what the dynamo exporter emits for torch 2.x
DEPLOY_HINT = "pip install 'sctrain[deploy]'"


class ExportError(RuntimeError):
    """Export or parity failure, or a missing optional dependency; one line."""


# ----------------------------------------------------------------------------------------- metadata

def input_shape(model: LoadedModel, kind: str) -> list:
    if kind == "audio":
        return ["batch", CLIP_SAMPLES]
    return ["batch", 1, *feature_shape(model.config.features)]


META_KEYS = ("sctrain.format", "sctrain.labels", "sctrain.input", "sctrain.input_shape", "sctrain.sample_rate",
             "sctrain.features", "sctrain.checkpoint_metrics", "sctrain.thresholds", "sctrain.detector")
# Loggers that narrate the dynamo exporter's passes (and warn about torchvision ops we do not use).
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


def metadata(model: LoadedModel, kind: str) -> dict[str, str]:
    """String key/values stored in the exported file (:data:`META_KEYS`: what a consumer needs besides
    the graph)."""
    return {
        "sctrain.format": EXPORT_FORMAT,
        "sctrain.labels": json.dumps(model.labels),
        "sctrain.input": kind,
        "sctrain.input_shape": json.dumps(input_shape(model, kind)),
        "sctrain.sample_rate": str(SAMPLE_RATE),
        "sctrain.features": json.dumps(dataclasses.asdict(model.config.features)),
        "sctrain.checkpoint_metrics": json.dumps(model.metrics, default=str),
        "sctrain.thresholds": json.dumps(threshold_dict(model.labels, model_thresholds(model))),
        "sctrain.detector": json.dumps(model_rules(model).to_dict()),
    }


def _example(model: LoadedModel, kind: str, batch: int = 2) -> torch.Tensor:
    wave = torch.randn(batch, CLIP_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1
    return wave if kind == "audio" else model.features(wave)


def _module(model: LoadedModel, kind: str, fast: bool = False) -> torch.nn.Module:
    if fast:
        return (model.cpu_classifier if kind == "audio" else model.cpu_net).eval()
    return (model.classifier if kind == "audio" else model.net).eval()


# ------------------------------------------------------------------------------------------ writers

def require(*modules: str) -> None:
    """One-line :class:`ExportError` naming the optional packages that are missing (or fail to import)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed: {DEPLOY_HINT}")


def export_onnx(model: LoadedModel, out: str | Path, kind: str = "audio") -> Path:
    """Write an ONNX file (dynamic batch) with the :func:`metadata`; the dynamo exporter handles the STFT."""
    require("onnx", "onnxscript")
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module, example = _module(model, kind), _example(model, kind)
    arg = "wave" if kind == "audio" else "x"  # the forward() argument names of AudioClassifier / KWSNet
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(out), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                              input_names=[kind], output_names=["logits"], external_data=False,
                              dynamic_shapes={arg: {0: torch.export.Dim("batch")}})
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    proto = onnx.load(str(out))
    for key, value in metadata(model, kind).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"sctrain keyword spotter ({len(model.labels)} labels, input {kind}); see sctrain.export"
    onnx.save(proto, str(out))
    return out


def export_torchscript(model: LoadedModel, out: str | Path, kind: str = "audio") -> Path:
    """Write a traced, frozen TorchScript file with the :func:`metadata` as ``_extra_files``.

    Traced from the CPU inference copy of the network (:attr:`LoadedModel.cpu_net`: the layouts it
    picks are baked into the graph, which runs ~30 % faster than a trace of the module as trained).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module, example = _module(model, kind, fast=True), _example(model, kind)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the PyTorch-only runtime
        # Freezing inlines the weights as constants.
        scripted = torch.jit.freeze(torch.jit.trace(module, example))
        scripted.save(str(out), _extra_files={k: v.encode() for k, v in metadata(model, kind).items()})
    return out


# ------------------------------------------------------------------------------------------ runners

class ExportedModel:
    """An exported file, loaded for inference: ``__call__(np.ndarray) -> logits`` and its metadata."""

    def __init__(self, path: str | Path, meta: dict[str, str]) -> None:
        self.path = Path(path)
        self.meta = meta
        if meta.get("sctrain.format") != EXPORT_FORMAT:
            raise ExportError(f"{path} is not an sctrain export (format: {meta.get('sctrain.format')!r})")
        self.labels: list[str] = json.loads(meta["sctrain.labels"])
        self.input: str = meta["sctrain.input"]
        # {keyword: detection threshold}; {} for files exported before thresholds were stored
        self.thresholds: dict[str, float] = json.loads(meta.get("sctrain.thresholds") or "{}")
        # The detector rules those thresholds were calibrated under ({} for files exported before they were stored)
        self.detector: dict = json.loads(meta.get("sctrain.detector") or "{}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxModel(ExportedModel):
    """ONNX Runtime session, tuned for latency: ``threads`` intra-op threads, all graph optimisations."""

    def __init__(self, path: str | Path, threads: int = 1, providers: Optional[list[str]] = None) -> None:
        require("onnxruntime")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph branch: parallel operators buy nothing
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        super().__init__(path, dict(self.session.get_modelmeta().custom_metadata_map))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class TorchScriptModel(ExportedModel):
    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        files = {k: "" for k in META_KEYS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(path), map_location=device, _extra_files=files)
        super().__init__(path, {k: v.decode() if isinstance(v, bytes) else v for k, v in files.items()})

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def load_exported(path: str | Path, threads: int = 1) -> ExportedModel:
    return OnnxModel(path, threads) if str(path).endswith(".onnx") else TorchScriptModel(path)


# ------------------------------------------------------------------------------------------- parity

def find_clips(paths: list[str | Path], limit: int) -> list[Path]:
    """Up to ``limit`` audio files from files and folders (folders: ``*.wav`` below them, spread evenly over
    the sorted list so every word folder is represented; background-noise recordings left out)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.wav") if BACKGROUND_DIR not in f.parts)
        elif p.is_file():
            files.append(p)
    if len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def why_no_clips(path: str | Path) -> str:
    """Why :func:`find_clips` found nothing in ``path``: missing, unreadable (the permission, which a silent
    folder walk would hide), or holding no ``.wav`` files."""
    path = Path(path)
    if not path.exists():
        return f"{path}: not found"
    if path.is_dir():
        try:
            for _ in os.scandir(path):
                break
        except PermissionError as e:
            return f"{path}: cannot be read ({e.strerror})"
        return f"{path}: no .wav files below it"
    return f"{path}: not a .wav file or folder"


def clip_batch(files: list[Path]) -> np.ndarray:
    """``[N, 16000]`` float32: the first 1 s window of each file (read and converted like predict does)."""
    return np.stack([file_windows(read_audio(f))[0][0] for f in files])


@torch.inference_mode()
def parity(model: LoadedModel, exported: ExportedModel, audio: np.ndarray) -> dict:
    """PyTorch vs the exported file on the same clips: max |logit difference| and argmax agreement."""
    wave = torch.from_numpy(audio)
    reference = model.classifier(wave).numpy()
    x = audio if exported.input == "audio" else model.features(wave).numpy()
    got = exported(x)
    if got.shape != reference.shape:
        raise ExportError(f"{exported.path}: logits of shape {got.shape}, PyTorch gives {reference.shape}")
    return {"clips": len(audio), "max_abs_diff": float(np.abs(got - reference).max()),
            "argmax_agree": int((got.argmax(1) == reference.argmax(1)).sum())}


def check_parity(model: LoadedModel, exported: ExportedModel, audio: np.ndarray, atol: float,
                 shown: Optional[Path] = None) -> dict:
    """:func:`parity`, raising :class:`ExportError` unless every argmax agrees and the largest logit
    difference is at most ``atol`` (``shown``: the path to name in the message)."""
    shown = shown or exported.path
    result = parity(model, exported, audio)
    if result["argmax_agree"] != result["clips"] or not result["max_abs_diff"] <= atol:
        raise ExportError(f"parity check failed for {shown}: max |logit diff| {result['max_abs_diff']:.3g} "
                          f"(atol {atol:g}), argmax agrees on {result['argmax_agree']}/{result['clips']} clips")
    if exported.labels != model.labels:
        raise ExportError(f"{shown}: stored labels differ from the checkpoint's")
    return result


def write_checked(model: LoadedModel, out: Path, fmt: str, kind: str, audio: np.ndarray, atol: float) -> dict:
    """Export to a temporary name next to ``out``, check parity, then rename into place: a file that
    fails the check is deleted and never replaces an earlier good export."""
    if out.is_dir():  # the temporary name would lack the suffix that picks the runtime
        raise ExportError(f"--out {out} is a folder; name the file to write, e.g. {out / ('model' + SUFFIX[fmt])}")
    tmp = temp_name(out, keep_suffix=True)  # load_exported picks the runtime by the suffix
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()  # a read-only folder fails here, in plain words, not deep inside an exporter
        (export_onnx if fmt == "onnx" else export_torchscript)(model, tmp, kind)
        result = check_parity(model, load_exported(tmp), audio, atol, shown=out)
        os.replace(tmp, out)
    except OSError as e:
        raise ExportError(f"cannot write {out} ({e.strerror or first_line(e)}); pick a writable folder with --out") \
            from None
    except RuntimeError as e:  # torch's writers report a full disk so
        if not is_disk_full(e):
            raise
        raise ExportError(f"{no_space_message(out)} while writing {out}") from None
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even the unlink of a missing file
            tmp.unlink(missing_ok=True)
    return result


def default_out(checkpoint: Path, fmt: str, kind: str) -> Path:
    stem = checkpoint.name.removesuffix(".pt")
    return checkpoint.with_name(stem + ("" if kind == "audio" else ".logmel") + SUFFIX[fmt])

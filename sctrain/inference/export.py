"""Export a checkpoint to ONNX (float or int8), TorchScript or LiteRT (``python -m sctrain.export``), checked
against PyTorch.

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

``--int8`` (ONNX): the network statically quantized by ONNX Runtime (:mod:`sctrain.inference.quantize`: QDQ,
int8 per-channel weights, int8 activations calibrated on ``--calibration-clips`` clips of the checkpoint's
training split), the front end float32; ``sctrain.quantization`` (JSON) says how. Its parity check is by
agreement, not bitwise (:class:`Tolerance`): at least ``--min-agreement`` (0.9) of the check clips keep
PyTorch's argmax and no class probability moves by more than ``--max-prob-diff`` (0.35).

``--streaming`` (ONNX): a stateful streaming model, one hop of audio and the state tensors in, logits and the new
state out (:mod:`sctrain.inference.stateful_export`), checked against the windowed model over a stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.features import feature_shape
from sctrain.audio.io import read_audio
from sctrain.data.speechcommands import BACKGROUND_DIR, is_clip_name
from sctrain.inference.events import threshold_dict
from sctrain.inference.loading import LoadedModel
from sctrain.inference.predict import file_windows
from sctrain.inference.streaming import model_rules, model_thresholds
from sctrain.utils import first_line, is_disk_full, no_space_message, temp_name

log = logging.getLogger(__name__)

EXPORT_FORMAT = "sctrain-export/1"
INPUTS = ("audio", "logmel")
FORMATS = ("onnx", "torchscript", "tflite")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "tflite": ".tflite"}
INT8_FORMATS = ("onnx", "tflite")
ONNX_OPSET = 20  # STFT needs >= 17; 20 is what the dynamo exporter emits for torch 2.x
DEPLOY_HINT = "pip install 'sctrain[deploy]'"
EDGE_HINT = "pip install 'sctrain[edge]'"


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

def require(*modules: str, hint: str = DEPLOY_HINT) -> None:
    """One-line :class:`ExportError` naming the optional packages that are missing (or fail to import)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed: {hint}")


def _write_onnx_graph(module: torch.nn.Module, example: torch.Tensor, out: Path, arg: str, input_name: str,
                      output_name: str, dynamo: bool = True) -> None:
    """``module`` exported into ``out`` (dynamic batch), the exporter's narration muted.

    ``dynamo``: torch's dynamo exporter, which handles the STFT; False: the TorchScript-based exporter, for
    graphs without it (the network alone), 5-25x faster here and enough for what the quantizer reads.
    """
    with quiet_exporter():
        if dynamo:
            torch.onnx.export(module, (example,), str(out), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                              input_names=[input_name], output_names=[output_name], external_data=False,
                              dynamic_shapes={arg: {0: torch.export.Dim("batch")}})
        else:
            torch.onnx.export(module, (example,), str(out), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})


@contextlib.contextmanager
def quiet_exporter():
    """The exporters' narration and warnings muted, gradients off."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def add_metadata(path: Path, model: LoadedModel, kind: str, extra: Optional[dict[str, str]] = None) -> None:
    """Store the :func:`metadata` (and ``extra`` keys) in the ONNX file at ``path``."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {**metadata(model, kind), **(extra or {})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    precision = "int8" if extra and "sctrain.quantization" in extra else "float32"
    proto.doc_string = (f"sctrain keyword spotter ({len(model.labels)} labels, input {kind}, {precision}); "
                        "see sctrain.export")
    onnx.save(proto, str(path))


def export_onnx(model: LoadedModel, out: str | Path, kind: str = "audio") -> Path:
    """Write an ONNX file (dynamic batch) with the :func:`metadata`; the dynamo exporter handles the STFT."""
    require("onnx", "onnxscript")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arg = "wave" if kind == "audio" else "x"  # the forward() argument names of AudioClassifier / the networks
    _write_onnx_graph(_module(model, kind), _example(model, kind), out, arg, kind, "logits")
    add_metadata(out, model, kind)
    return out


def export_front_end_onnx(model: LoadedModel, out: Path) -> Path:
    """The front end alone (:class:`LogMel`, float32): ``audio [batch, 16000] -> logmel [batch, 1, F, T]``."""
    require("onnx", "onnxscript")
    _write_onnx_graph(model.features.eval(), _example(model, "audio"), out, "wave", "audio", "logmel")
    return out


def export_onnx_int8(model: LoadedModel, out: str | Path, kind: str = "audio",
                     calibration: Optional[np.ndarray] = None, clips: int = 0) -> Path:
    """Write an int8 ONNX file (:mod:`sctrain.inference.quantize`): the network quantized statically,
    calibrated on ``calibration`` audio (default: ``clips`` clips of the checkpoint's training split), the
    front end float32 in the graph for ``kind`` 'audio'."""
    require("onnx", "onnxscript", "onnxruntime")
    from sctrain.inference import quantize

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        calibration = quantize.calibration_audio(model, clips or quantize.CALIBRATION_CLIPS)
    with tempfile.TemporaryDirectory(prefix="sctrain-int8-") as tmp:
        net = Path(tmp) / "net.onnx"
        _write_onnx_graph(model.net.eval(), _example(model, "logmel"), net, "x", "logmel", "logits", dynamo=False)
        qnet = quantize.quantize_net(net, Path(tmp) / "net.int8.onnx", quantize.FeatureReader(model, calibration))
        if kind == "audio":
            front = export_front_end_onnx(model, Path(tmp) / "frontend.onnx")
            quantize.join_front_end(front, qnet, out)
        else:
            shutil.copyfile(qnet, out)
    add_metadata(out, model, kind, {"sctrain.quantization": quantize.quantization_record(len(calibration))})
    return out


def export_tflite(model: LoadedModel, out: str | Path, kind: str = "logmel", int8: bool = False,
                  calibration: Optional[np.ndarray] = None, clips: int = 0) -> Path:
    """Write a LiteRT (``.tflite``) file, batch 1 (:mod:`sctrain.inference.litert`): the network on features,
    or for ``kind`` 'audio' the front end as :class:`~sctrain.inference.litert_export.RealLogMel` before it;
    ``int8``: the network quantized, calibrated like :func:`export_onnx_int8`. The :func:`metadata` goes
    into the flatbuffer's metadata table."""
    require("litert_torch", "ai_edge_litert", hint=EDGE_HINT)
    from sctrain.inference import litert, litert_export, quantize

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    inputs = None
    if int8:
        if calibration is None:
            calibration = quantize.calibration_audio(model, clips or quantize.CALIBRATION_CLIPS)
        with torch.inference_mode():
            inputs = calibration if kind == "audio" else model.features(torch.from_numpy(calibration)).numpy()
        extra["sctrain.quantization"] = quantize.quantization_record(len(calibration), tool="litert")
    meta = {**metadata(model, kind), **extra}
    meta["sctrain.input_shape"] = json.dumps([1, *json.loads(meta["sctrain.input_shape"])[1:]])
    # Sequential names its children "0" (front end) and "1" (network): with audio in, quantize "1" only.
    litert_export.convert(litert_export.convertible(model, kind), _example(model, kind, batch=1), out, inputs,
                   quantize_only="1" if kind == "audio" else None)
    litert.write_metadata(out, meta)
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


class LiteRTModel(ExportedModel):
    """A ``.tflite`` file in ``ai_edge_litert``'s interpreter (batch 1 inside; any batch in)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        require("ai_edge_litert", hint=EDGE_HINT)
        from sctrain.inference import litert

        self.runner = litert.LiteRTInterpreter(path, threads)
        super().__init__(path, litert.read_metadata(path))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.runner(x)


def load_exported(path: str | Path, threads: int = 1) -> ExportedModel:
    """The exported file at ``path`` in its runtime; a stateful streaming ONNX file (``sctrain.input`` 'stream')
    as :class:`sctrain.inference.stateful_export.OnnxStateful`."""
    name = str(path)
    if name.endswith(".onnx"):
        model = OnnxModel(path, threads)
        if model.input == "stream":
            from sctrain.inference.stateful_export import OnnxStateful

            return OnnxStateful(path, threads)
        return model
    return LiteRTModel(path, threads) if name.endswith(".tflite") else TorchScriptModel(path)


# ------------------------------------------------------------------------------------------- parity

def find_clips(paths: list[str | Path], limit: int) -> list[Path]:
    """Up to ``limit`` audio files from files and folders (folders: the clips below them, WAV or FLAC,
    spread evenly over the sorted list so every word folder is represented; background-noise recordings
    left out)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if is_clip_name(f.name) and BACKGROUND_DIR not in f.parts)
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


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@torch.inference_mode()
def parity(model: LoadedModel, exported: ExportedModel, audio: np.ndarray) -> dict:
    """PyTorch vs the exported file on the same clips: max |logit difference|, max |probability
    difference| and argmax agreement."""
    wave = torch.from_numpy(audio)
    reference = model.classifier(wave).numpy()
    x = audio if exported.input == "audio" else model.features(wave).numpy()
    got = exported(x)
    if got.shape != reference.shape:
        raise ExportError(f"{exported.path}: logits of shape {got.shape}, PyTorch gives {reference.shape}")
    return {"clips": len(audio), "max_abs_diff": float(np.abs(got - reference).max()),
            "max_prob_diff": float(np.abs(softmax(got) - softmax(reference)).max()),
            "argmax_agree": int((got.argmax(1) == reference.argmax(1)).sum())}


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What a file must meet against PyTorch on the check clips.

    Float files (the same arithmetic, reordered): every argmax agrees and no logit differs by more than
    ``atol``. int8 files round every weight and activation to 8 bits, so their logits differ by far more
    than float rounding and a clip on a decision boundary may flip: they must agree on at least
    ``min_agreement`` of the clips and no class probability may differ by more than ``max_prob_diff``.
    """

    atol: float = 1e-3
    min_agreement: float = 1.0
    max_prob_diff: float = 1.0

    @classmethod
    def int8(cls, min_agreement: float = 0.9, max_prob_diff: float = 0.35) -> "Tolerance":
        return cls(atol=float("inf"), min_agreement=min_agreement, max_prob_diff=max_prob_diff)

    def met(self, result: dict) -> bool:
        return (result["argmax_agree"] >= self.min_agreement * result["clips"]
                and result["max_abs_diff"] <= self.atol and result["max_prob_diff"] <= self.max_prob_diff)

    def describe(self) -> str:
        if self.atol == float("inf"):
            return f"int8 bounds: agreement >= {self.min_agreement:.0%}, max |prob diff| <= {self.max_prob_diff:g}"
        return f"atol {self.atol:g}"


def check_parity(model: LoadedModel, exported: ExportedModel, audio: np.ndarray, atol: float | Tolerance,
                 shown: Optional[Path] = None) -> dict:
    """:func:`parity`, raising :class:`ExportError` unless it meets the tolerance (a :class:`Tolerance`, or
    ``atol``: every argmax agrees and the largest logit difference is at most that); ``shown``: the path to
    name in the message."""
    tolerance = atol if isinstance(atol, Tolerance) else Tolerance(atol=atol)
    return require_met(parity(model, exported, audio), tolerance, shown or exported.path,
                       exported.labels == model.labels)


def require_met(result: dict, tolerance: Tolerance, shown: Path, labels_match: bool, check: str = "parity",
                unit: str = "clips") -> dict:
    """``result`` (a :func:`parity`-like dict), or :class:`ExportError` naming ``shown`` unless it meets
    ``tolerance`` and the file's labels are the checkpoint's."""
    if not tolerance.met(result):
        raise ExportError(f"{check} check failed for {shown}: max |logit diff| {result['max_abs_diff']:.3g}, "
                          f"max |prob diff| {result['max_prob_diff']:.3g}, argmax agrees on "
                          f"{result['argmax_agree']}/{result['clips']} {unit} ({tolerance.describe()})")
    if not labels_match:
        raise ExportError(f"{shown}: stored labels differ from the checkpoint's")
    return result


def write_checked(model: LoadedModel, out: Path, fmt: str, kind: str, audio: np.ndarray,
                  atol: float | Tolerance, int8: bool = False, calibration_clips: int = 0,
                  calibration: Optional[np.ndarray] = None) -> dict:
    """Export to a temporary name next to ``out``, check parity, then rename into place: a file that
    fails the check is deleted and never replaces an earlier good export. ``int8``: quantized
    (:func:`export_onnx_int8`, calibrated on ``calibration`` audio, else ``calibration_clips`` training
    clips), checked against ``atol`` if it is a :class:`Tolerance`, else against :meth:`Tolerance.int8`."""
    if int8 and fmt not in INT8_FORMATS:
        raise ExportError(f"--int8 is for --format {' or '.join(INT8_FORMATS)}, not {fmt}")
    if int8 and not isinstance(atol, Tolerance):
        atol = Tolerance.int8()

    def write(tmp: Path) -> dict:
        if fmt == "tflite":
            export_tflite(model, tmp, kind, int8, calibration, calibration_clips)
        elif int8:
            export_onnx_int8(model, tmp, kind, calibration, calibration_clips)
        else:
            (export_onnx if fmt == "onnx" else export_torchscript)(model, tmp, kind)
        return check_parity(model, load_exported(tmp), audio, atol, shown=out)
    return write_then_check(out, SUFFIX[fmt], write)


def write_then_check(out: Path, suffix: str, write: Callable[[Path], dict]) -> dict:
    """``write(tmp)`` writes and checks a file at a temporary name next to ``out`` and returns the check's result;
    then the file is renamed into place. A file that fails (``write`` raises) is deleted and never replaces an
    earlier good export; a folder that cannot be written or a full disk is a one-line :class:`ExportError`."""
    if out.is_dir():  # the temporary name would lack the suffix that picks the runtime
        raise ExportError(f"--out {out} is a folder; name the file to write, e.g. {out / ('model' + suffix)}")
    tmp = temp_name(out, keep_suffix=True)  # load_exported picks the runtime by the suffix
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()  # a read-only folder fails here, in plain words, not deep inside an exporter
        result = write(tmp)
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


def default_out(checkpoint: Path, fmt: str, kind: str, int8: bool = False) -> Path:
    stem = checkpoint.name.removesuffix(".pt")
    return checkpoint.with_name(stem + ("" if kind == "audio" else ".logmel") + (".int8" if int8 else "") + SUFFIX[fmt])

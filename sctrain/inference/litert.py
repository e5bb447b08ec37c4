"""LiteRT (TFLite) export with ``litert-torch`` and inference with ``ai-edge-litert`` (``pip install 'sctrain[edge]'``).

Why this pair: ``litert-torch`` converts a PyTorch module through ``torch.export`` straight to a ``.tflite``
flatbuffer (no TensorFlow, no ONNX hop) and its 0.10 release runs on torch 2.14; ``ai-edge-litert`` is
Google's interpreter package alone (no torch, no TensorFlow), what a device-side Python client installs.

Input: always the features (``--input logmel``): ``float32 [1, 1, bands, frames]``, the per-clip normalised
log-mel / MFCC of :class:`sctrain.audio.features.LogMel` (parameters in ``sctrain.features``). The raw-audio
graph does not convert: LiteRT has no complex tensors, and the STFT is one (``Unsupported ir element type:
complex<f32>``, litert-torch 0.10). Batch 1, fixed: the shape a device runs.

``int8``: PyTorch's own PT2E flow (``torchao.quantization.pt2e`` ``prepare_pt2e`` / ``convert_pt2e`` with
litert-torch's ``PT2EQuantizer``: symmetric per-channel int8 weights, int8 activations), calibrated on clips
of the checkpoint's training split, then converted: a fully integer model (int8 input and output tensors,
their scale and zero point in the file) for TFLite Micro class devices. :class:`LiteRTModel` quantizes the
features in and dequantizes the logits out.

Metadata: the same ``sctrain.*`` keys as the ONNX files, as entries of the flatbuffer's ``metadata`` table
(name -> buffer of UTF-8 JSON/text), readable with ``ai_edge_litert`` alone (:func:`read_metadata`).
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``sctrain.*`` entries of a ``.tflite`` file's metadata table (``ai_edge_litert`` only)."""
    schema = _schema()
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    meta = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = entry.Name().decode()
        if name.startswith("sctrain."):
            meta[name] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    return meta


def write_metadata(path: Path, meta: dict[str, str]) -> None:
    """Add ``meta`` to the metadata table of the ``.tflite`` file at ``path`` (rewritten in place)."""
    from ai_edge_litert.tools import flatbuffer_utils

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    model.metadata = list(model.metadata or [])
    for key, value in meta.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = key, len(model.buffers) - 1
        model.metadata.append(entry)
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def _quiet():
    """litert-torch narrates every conversion stage on stdout/stderr and through absl; keep the CLI's one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("litert_torch", "absl", "torch._export", "torch.export", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def convert_net(net, example, out: Path, calibration: Optional[np.ndarray] = None) -> Path:
    """``net`` (features in, logits out, eval mode) -> ``out``; ``calibration``: features ``[N, 1, F, T]`` to
    quantize to int8 with (None: float32)."""
    import contextlib
    import io

    import litert_torch
    import torch

    _quiet()
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if calibration is None:
            edge = litert_torch.convert(net, (example,))
        else:
            from litert_torch.quantize import pt2e_quantizer, quant_config
            from torchao.quantization.pt2e import quantize_pt2e

            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
            graph = quantize_pt2e.prepare_pt2e(torch.export.export(net, (example,)).module(), quantizer)
            for i in range(len(calibration)):  # observers record each activation's range
                graph(torch.from_numpy(calibration[i: i + 1]))
            graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
            config = quant_config.QuantConfig(pt2e_quantizer=quantizer)
            edge = litert_torch.convert(graph, (example,), quant_config=config)
        edge.export(str(out))
    return out


class LiteRTInterpreter:
    """A ``.tflite`` keyword spotter run by ``ai_edge_litert``'s interpreter: ``__call__([N, 1, F, T]) -> [N,
    labels]`` logits (one invoke per clip; int8 files quantize the input and dequantize the output)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        scale, zero = self.input["quantization"]
        oscale, ozero = self.output["quantization"]
        rows = []
        for clip in x:
            clip = clip[None]
            if self.input["dtype"] != np.float32:  # an integer model: features to its int8 grid
                info = np.iinfo(self.input["dtype"])
                clip = np.clip(np.round(clip / scale) + zero, info.min, info.max).astype(self.input["dtype"])
            self.interpreter.set_tensor(self.input["index"], clip)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.output["index"])
            rows.append((out.astype(np.float32) - ozero) * oscale if self.output["dtype"] != np.float32 else out)
        return np.concatenate(rows).astype(np.float32)

"""LiteRT (TFLite) export with ``litert-torch`` and inference with ``ai-edge-litert`` (``pip install 'sctrain[edge]'``).

Why this pair: ``litert-torch`` converts a PyTorch module through ``torch.export`` straight to a ``.tflite``
flatbuffer (no TensorFlow, no ONNX hop) and its 0.10 release runs on torch 2.14; ``ai-edge-litert`` is
Google's interpreter package alone (no torch, no TensorFlow), what a device-side Python client installs.

Input (batch 1, fixed: the shape a device runs): ``--input logmel`` (the default for tflite) ``float32 [1, 1,
bands, frames]``, the per-clip normalised log-mel / MFCC of :class:`sctrain.audio.features.LogMel`
(parameters in ``sctrain.features``, the numbers in the manifest); or ``--input audio`` ``float32 [1, 16000]``
with the front end in the file as :class:`RealLogMel`. The training front end's graph does not convert
(LiteRT has no complex tensors and the STFT is one: ``Unsupported ir element type: complex<f32>``,
litert-torch 0.10), so :class:`RealLogMel` computes the same STFT as a strided convolution with the windowed
DFT basis: real-valued, but its basis is ``2 * (n_fft // 2 + 1) x win_length`` float32 weights (1 MB at the
default 512-point FFT, 2.6 MB for DS-CNN's 1024), many times a small network's size.

``int8``: PyTorch's own PT2E flow (``torchao.quantization.pt2e`` ``prepare_pt2e`` / ``convert_pt2e`` with
litert-torch's ``PT2EQuantizer``: symmetric per-channel int8 weights, int8 activations), calibrated on clips
of the checkpoint's training split, then converted: a fully integer model (int8 input and output tensors,
their scale and zero point in the file) for TFLite Micro class devices; with ``--input audio`` only the
network is quantized and the front end stays float32. :class:`LiteRTInterpreter` quantizes an int8 input
and dequantizes an int8 output.

This module is the device side and imports no torch (a client runs it with ``ai_edge_litert`` alone); the
conversion is :mod:`sctrain.inference.litert_export`.

Metadata: the same ``sctrain.*`` keys as the ONNX files, as entries of the flatbuffer's ``metadata`` table
(name -> buffer of UTF-8 JSON/text), readable with ``ai_edge_litert`` alone (:func:`read_metadata`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


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

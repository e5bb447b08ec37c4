"""int8 ONNX: static post-training quantization of the network with ONNX Runtime's own tools.

What is quantized: the network only, from its features-in (``--input logmel``) graph. The front end stays
float32: its STFT, the power spectrum's squares, the log and the per-clip normalisation span a dynamic
range (digital silence at -60 dB to full-scale vowels) that 8 bits cannot hold, ONNX Runtime has no int8
STFT, and the front end is a small share of the time (docs/deploy.md). For ``--input audio`` the float
front end graph and the int8 network graph are joined into one file, so a consumer still passes raw audio.

How: ``onnxruntime.quantization.quant_pre_process`` (shape inference, BatchNorm folded into the
convolutions), then ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear pairs around each
int8 operator, which ONNX Runtime fuses into integer kernels), int8 weights per output channel, int8
activations, with activation ranges (MinMax) calibrated on features of clips from the checkpoint's
**training** split: the validation and test clips stay unseen by every choice that shapes the file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from sctrain.audio.constants import CLIP_SAMPLES

log = logging.getLogger(__name__)

# Default --calibration-clips. For kwsnet (width 16) on speech_commands_8w, 64 and 256 clips gave the same int8
# test accuracy (96.77 %, 464 clips) on 2026-12-04; 256 reads in seconds and leaves margin for other families.
CALIBRATION_CLIPS = 256
CALIBRATION_BATCH = 32
CALIBRATION_SPLIT = "train"


def calibration_audio(model, clips: int = CALIBRATION_CLIPS) -> np.ndarray:
    """``[N, 16000]`` float32: ``clips`` clips of the checkpoint's training split, spread over its labels."""
    from sctrain.data.clips import split_audio

    audio, _ = split_audio(model.config.data, CALIBRATION_SPLIT, clips)
    return audio


class FeatureReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol: ``get_next() -> {input: batch} | None``, the
    training front end's features of the calibration clips, in batches."""

    def __init__(self, model, audio: np.ndarray, input_name: str = "logmel", batch: int = CALIBRATION_BATCH):
        self.input_name = input_name
        with torch.inference_mode():
            feats = model.features(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))).numpy()
        self._batches: Iterator[np.ndarray] = iter([feats[i: i + batch] for i in range(0, len(feats), batch)])

    def get_next(self) -> Optional[dict]:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # part of the protocol; quantize_static reads the data once
        pass


class _FromQuantizer(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer logs through the root logger, e.g. a warning per LayerNorm weight that per-channel
    quantization leaves per-tensor: as many lines as layers, none of them actionable."""
    root, keep = logging.getLogger(), _FromQuantizer()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_net(float_net: Path, out: Path, reader: FeatureReader) -> Path:
    """``float_net`` (a features-in ONNX file) -> int8 QDQ ``out``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="sctrain-int8-") as tmp, _quiet_quantizer():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_net), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        # Asymmetric activations: after a ReLU a symmetric range would waste the negative
                        # half of the 8 bits. Symmetric weights: zero offset, the fast integer kernels.
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return out


def join_front_end(front_end: Path, net: Path, out: Path) -> Path:
    """One graph: ``audio -> front end (float) -> logmel -> net (int8) -> logits``."""
    import onnx
    from onnx import compose

    fe, q = onnx.load(str(front_end)), onnx.load(str(net))
    # Both come from the same exporter; the quantizer may add opset imports the front end lacks.
    opsets = {o.domain: o.version for o in fe.opset_import}
    for o in q.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    for proto in (fe, q):
        del proto.opset_import[:]
        proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    q.ir_version = fe.ir_version = max(fe.ir_version, q.ir_version)
    joined = compose.merge_models(fe, q, io_map=[(fe.graph.output[0].name, q.graph.input[0].name)],
                                  prefix1="frontend/", prefix2="net/")
    # Public names as the float export has them: "audio" in, "logits" out.
    rename = {joined.graph.input[0].name: "audio", joined.graph.output[0].name: "logits"}
    for node in joined.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    joined.graph.input[0].name, joined.graph.output[0].name = "audio", "logits"
    onnx.save(joined, str(out))
    return out


TOOLS = {"onnx": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                  "activations": "int8 asymmetric, MinMax calibration"},
         "litert": {"tool": "torchao pt2e + litert_torch.convert", "format": "integer tflite (int8 input/output)",
                    "activations": "int8 symmetric, MinMax observers"}}


def quantization_record(clips: int, tool: str = "onnx") -> str:
    """``sctrain.quantization`` metadata: how the int8 file was made (JSON)."""
    return json.dumps({"dtype": "int8", **TOOLS[tool], "weights": "int8 per channel, symmetric",
                       "front_end": "float32, outside the network", "calibration_split": CALIBRATION_SPLIT,
                       "calibration_clips": clips, "clip_samples": CLIP_SAMPLES})

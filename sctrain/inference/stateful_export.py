"""The stateful streaming model (:mod:`sctrain.inference.stateful`) as an ONNX file, checked on a real stream.

``python -m sctrain.export CKPT --format onnx --streaming [--hop-ms MS]`` writes ``best_sc.stream.onnx``:

- inputs ``audio`` ``float32 [1, hop]`` (the next hop of mono 16 kHz audio in [-1, 1]) and ``state_0`` ...
  ``state_{n-1}`` (zeros at the start of a stream); outputs ``logits`` ``float32 [1, labels]`` (those of the
  1 s window that ends with this hop) and ``next_state_0`` ... (the next call's states, in the same order);
- metadata: what every export carries (``sctrain.labels``, ``sctrain.thresholds``, ``sctrain.detector``,
  ``sctrain.features``, ...), ``sctrain.input`` 'stream', ``sctrain.input_shape`` ``[1, hop]`` and
  ``sctrain.streaming`` (JSON: ``hop_samples``, ``window_samples``, ``lead_in_samples``, ``stride_frames``,
  ``top_frames`` and ``states``, each ``{"name", "shape"}``).

A client feeds ``lead_in_samples`` zeros, then the audio, ``hop_samples`` at a time (the zeros are the start
of the first call); the logits of a call that ends ``window_samples`` or more into the real audio are those of
the windowed model on the last 1 s. After writing, the file runs over the check clips joined into one stream
and fails, keeping no file, unless at every such call its logits are within ``--atol`` of the PyTorch windowed
model's and every argmax agrees.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sctrain.inference import export
from sctrain.inference.export import ExportError, OnnxModel, Tolerance
from sctrain.inference.loading import LoadedModel
from sctrain.inference.stateful import StatefulRunner, run_stream, stateful_net, windowed_logits

STREAM_SUFFIX = ".stream.onnx"


def export_stateful_onnx(model: LoadedModel, out: str | Path, hop: Optional[int] = None) -> Path:
    """Write the stateful ONNX file of ``model`` at ``hop`` samples per call (default: the smallest multiple of
    the network's time stride of at least 100 ms); :class:`~sctrain.inference.stateful.StreamingError` if the
    checkpoint cannot stream."""
    export.require("onnx", "onnxscript")
    net = stateful_net(model, hop)
    plan = net.plan
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(1, plan.hop), *(torch.zeros(shape) for shape in plan.state_shapes))
    states = [s["name"] for s in plan.to_dict()["states"]]
    with export.quiet_exporter():
        torch.onnx.export(net, example, str(out), dynamo=True, opset_version=export.ONNX_OPSET, verbose=False,
                          input_names=["audio", *states], output_names=["logits", *(f"next_{s}" for s in states)],
                          external_data=False)
    export.add_metadata(out, model, "stream", {"sctrain.streaming": json.dumps(plan.to_dict()),
                                        "sctrain.input_shape": json.dumps([1, plan.hop])})
    return out


class OnnxStateful(OnnxModel, StatefulRunner):
    """A stateful ONNX file in ONNX Runtime with its state: ``runner(chunk)`` -> the logits ``[labels]``."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__(path, threads)
        if self.input != "stream":
            raise ExportError(f"{path} is not a stateful streaming export (input {self.input!r}); export one with "
                              f"python -m sctrain.export CKPT --format onnx --streaming")
        info = json.loads(self.meta["sctrain.streaming"])
        self.hop, self.lead_in, self.window = info["hop_samples"], info["lead_in_samples"], info["window_samples"]
        self.state_names = [s["name"] for s in info["states"]]
        self.state_shapes = [tuple(s["shape"]) for s in info["states"]]
        self.reset()

    def reset(self) -> None:
        self.states = [np.zeros(shape, np.float32) for shape in self.state_shapes]

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        feeds = {"audio": np.ascontiguousarray(chunk, dtype=np.float32).reshape(1, -1),
                 **dict(zip(self.state_names, self.states))}
        out = self.session.run(None, feeds)
        self.states = out[1:]
        return out[0][0]


def stream_parity(model: LoadedModel, runner: StatefulRunner, wave: np.ndarray) -> dict:
    """The stateful runner vs the PyTorch windowed classifier over ``wave`` at every call that ends a window:
    largest |logit| and |probability| differences and argmax agreement (``clips``: the windows compared)."""
    starts, got = run_stream(runner, wave)
    if not len(starts):
        raise ExportError(f"the check stream ({len(wave) / 16000:.2f} s) is shorter than one window")
    reference = windowed_logits(model, wave, starts)
    return {"clips": len(starts), "hop_samples": runner.hop, "stream_s": len(wave) / 16000,
            "max_abs_diff": float(np.abs(got - reference).max()),
            "max_prob_diff": float(np.abs(export.softmax(got) - export.softmax(reference)).max()),
            "argmax_agree": int((got.argmax(1) == reference.argmax(1)).sum())}


def write_stateful_checked(model: LoadedModel, out: Path, wave: np.ndarray, tolerance: Tolerance,
                           hop: Optional[int] = None) -> dict:
    """:func:`export_stateful_onnx` to a temporary name, :func:`stream_parity` over ``wave`` (float32 audio,
    several seconds), renamed into place only if it meets ``tolerance``."""
    export.require("onnx", "onnxscript", "onnxruntime")

    def write(tmp: Path) -> dict:
        export_stateful_onnx(model, tmp, hop)
        runner = OnnxStateful(tmp)
        return export.require_met(stream_parity(model, runner, wave), tolerance, out, runner.labels == model.labels,
                                  check="stream parity", unit="windows")
    return export.write_then_check(out, STREAM_SUFFIX, write)


def default_stream_out(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + STREAM_SUFFIX)

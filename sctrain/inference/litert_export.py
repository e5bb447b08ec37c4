"""LiteRT conversion (``litert-torch``): the modules that convert, and the float / int8 conversion itself.

:mod:`sctrain.inference.litert` explains the files; this half needs torch, that one does not.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def _quiet():
    """litert-torch narrates every conversion stage on stdout/stderr and through absl; keep the CLI's one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("litert_torch", "absl", "torch._export", "torch.export", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


class RealLogMel(torch.nn.Module):
    """:class:`LogMel`'s numbers from real-valued ops only, for converters without complex tensors: the
    reflect-padded clip convolved (stride ``hop_length``) with the Hann-windowed cosine and sine DFT rows,
    cropped to the window's non-zero span; then power, mel filterbank, log, DCT and the same
    :func:`normalise_per_clip` (each as ``features.center`` and ``features.normalise`` say). Agrees with
    :class:`LogMel` to float32 rounding (the tests bound it at 1e-3)."""

    def __init__(self, logmel) -> None:
        super().__init__()
        s = logmel.mel.spectrogram
        self.n_fft, self.hop, self.win = s.n_fft, s.hop_length, s.win_length
        self.left = (s.n_fft - s.win_length) // 2  # where the window sits in the n_fft frame
        self.bins = s.n_fft // 2 + 1
        k = torch.arange(self.bins, dtype=torch.float64)[:, None]
        n = torch.arange(self.left, self.left + s.win_length, dtype=torch.float64)[None]
        angle = 2 * torch.pi * k * n / s.n_fft
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * s.window.double()
        self.register_buffer("basis", basis.float()[:, None, :])
        self.register_buffer("fb", logmel.mel.mel_scale.fb.clone())
        self.register_buffer("dct", None if logmel.dct is None else logmel.dct.clone())
        self.center, self.normalise = logmel.cfg.center, logmel.cfg.normalise == "clip"

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        from sctrain.audio.features import LOG_OFFSET, normalise_per_clip, reflect_pad

        padded = wave.reshape(-1, wave.shape[-1])
        padded = reflect_pad(padded, self.n_fft // 2) if self.center else padded
        padded = padded[:, self.left: padded.shape[-1] - (self.n_fft - self.win - self.left)]
        spec = torch.nn.functional.conv1d(padded[:, None], self.basis, stride=self.hop)  # [B, 2 * bins, frames]
        power = spec[:, : self.bins].square() + spec[:, self.bins:].square()
        mel = torch.log(power.transpose(1, 2) @ self.fb + LOG_OFFSET)
        if self.dct is not None:
            mel = mel @ self.dct
        return (normalise_per_clip(mel) if self.normalise else mel).transpose(-1, -2).unsqueeze(1)


def convertible(model, kind: str) -> torch.nn.Module:
    """What LiteRT converts for input ``kind``: the network, or :class:`RealLogMel` then the network."""
    net = model.net.eval()
    return net if kind == "logmel" else torch.nn.Sequential(RealLogMel(model.features), net).eval()


def convert(module: torch.nn.Module, example, out: Path, calibration: Optional[np.ndarray] = None,
            quantize_only: Optional[str] = None) -> Path:
    """``module`` (eval mode) -> ``out``; ``calibration``: inputs ``[N, ...]`` to quantize to int8 with (None:
    float32); ``quantize_only``: the name of the submodule to quantize (None: all of it)."""
    import contextlib
    import io

    import litert_torch

    _quiet()
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if calibration is None:
            edge = litert_torch.convert(module, (example,))
        else:
            from litert_torch.quantize import pt2e_quantizer, quant_config
            from torchao.quantization.pt2e import quantize_pt2e

            scheme = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
            whole = pt2e_quantizer.PT2EQuantizer().set_global(scheme)
            # litert-torch 0.10 cannot exclude a module (set_module_name(name, None) asserts): name the one to
            # quantize instead; the conversion is told the scheme by a quantizer with it as the global one.
            quantizer = whole if quantize_only is None else \
                pt2e_quantizer.PT2EQuantizer().set_module_name(quantize_only, scheme)
            graph = quantize_pt2e.prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
            for i in range(len(calibration)):  # observers record each activation's range
                graph(torch.from_numpy(calibration[i: i + 1]))
            graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
            edge = litert_torch.convert(graph, (example,), quant_config=quant_config.QuantConfig(pt2e_quantizer=whole))
        edge.export(str(out))
    return out

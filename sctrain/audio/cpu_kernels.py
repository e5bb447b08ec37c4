"""Optional compiled CPU kernels for the two slowest parts of the front end on a CPU.

``pip install`` builds ``sctrain.audio._cpu_kernels`` from ``sctrain/audio/csrc/cpu_kernels.c`` when a C compiler is
there (setup.py); without one everything still works, on the PyTorch ops that GPUs use. Each kernel does in
one pass what takes PyTorch several on a CPU:

- :func:`augment_wave`: WaveAugment's int16 conversion, gain, time shift and additive noise, applying the
  parameters that :meth:`sctrain.audio.augment.WaveAugment.draw` drew (the same draws as the PyTorch path).
- :func:`mel_energies`: LogMel's power spectrum and mel projection, over the filterbank's non-zero weights.

They run only on CPU tensors outside autograd, tracing, scripting and ``torch.compile`` (:func:`usable`),
so GPU training, exported models and gradients take the PyTorch path. ``SCTRAIN_CPU_KERNELS=0`` turns them
off. ``python -m sctrain.audio.cpu_kernels`` says whether they are built and in use.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

try:
    from sctrain.audio import _cpu_kernels
except ImportError:  # not built (no C compiler at install time): the PyTorch path is used
    _cpu_kernels = None

DISABLE_ENV = "SCTRAIN_CPU_KERNELS"
# Rows per thread below which another thread costs more to start than it saves (frames for mel_energies,
# clips for augment_wave: both about 0.1 ms of work).
MEL_ROWS_PER_THREAD = 1024
CLIPS_PER_THREAD = 16


class SparseFilterbank(NamedTuple):
    """A mel filterbank ``[bins, n_mels]`` as :func:`mel_energies` reads it: each band's run of non-zero bins."""

    bands: Tensor  # int32 [n_mels, 3]: first bin, bin count, start in weights
    weights: Tensor  # float32: each band's weights over its bins, band after band
    bins: int


def sparse_filterbank(fb: Tensor) -> SparseFilterbank:
    """The non-zero run of each column of ``fb``: triangular mel filters are zero outside one run of bins,
    so the product with the runs equals the dense product (tests/test_cpu_kernels.py checks it)."""
    fb = fb.detach().float().cpu()
    bands, weights, start = [], [], 0
    for m in range(fb.shape[1]):
        nonzero = fb[:, m].nonzero().flatten()
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        bands.append((lo, hi - lo, start))
        weights.append(fb[lo:hi, m])
        start += hi - lo
    return SparseFilterbank(torch.tensor(bands, dtype=torch.int32), torch.cat(weights).contiguous(), fb.shape[0])


def available() -> bool:
    """The kernels are built and not switched off with ``SCTRAIN_CPU_KERNELS=0``."""
    return _cpu_kernels is not None and os.environ.get(DISABLE_ENV, "1") != "0"


def plain_eager(x: Tensor) -> bool:
    """``x`` is not recording gradients and nothing traces, scripts, compiles or exports the code: opaque
    kernels and ``out=`` ops are allowed (they have no autograd formula and no graph to be recorded in)."""
    return (not (x.requires_grad and torch.is_grad_enabled()) and not torch.jit.is_tracing()
            and not torch.jit.is_scripting() and not torch.compiler.is_compiling())


def usable(x: Tensor) -> bool:
    """Whether a kernel may stand in for the PyTorch ops on ``x`` here and now."""
    return available() and x.device.type == "cpu" and plain_eager(x)


def _threads(rows: int, per_thread: int, threads: Optional[int]) -> int:
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, min(threads, rows // per_thread))


def _module():
    if _cpu_kernels is None:
        raise RuntimeError("sctrain.audio._cpu_kernels is not built; reinstall sctrain with a C compiler present")
    return _cpu_kernels


def mel_energies(spec: Tensor, fb: SparseFilterbank, offset: float = 0.0, threads: Optional[int] = None) -> Tensor:
    """Complex64 CPU spectrum ``[..., bins]`` -> float32 ``[..., n_mels]``:
    ``(spec.real ** 2 + spec.imag ** 2) @ fb + offset``. Threads: torch's intra-op count by default."""
    kernels = _module()
    if spec.dtype != torch.complex64 or spec.shape[-1] != fb.bins:
        raise ValueError(f"expected a complex64 spectrum of {fb.bins} bins, got {spec.dtype} {tuple(spec.shape)}")
    parts = torch.view_as_real(spec.resolve_conj()).contiguous()
    out = torch.empty(*spec.shape[:-1], fb.bands.shape[0], dtype=torch.float32)
    rows = out.numel() // max(1, fb.bands.shape[0])
    # .numpy() shares memory: the C side reads and writes these tensors' own buffers.
    kernels.mel_power(parts.numpy(), fb.bins, out.numpy(), fb.bands.numpy(), fb.weights.numpy(), offset,
                      _threads(rows, MEL_ROWS_PER_THREAD, threads))
    return out


def augment_wave(audio: Tensor, shift: Tensor, gain: Tensor, bank: Tensor, noise_start: Tensor,
                 noise_mult: Tensor, rms_floor: float, threads: Optional[int] = None) -> Tensor:
    """``audio [B, T]`` (int16 or float32, CPU) -> float32 ``[B, T]``, per row ``b``::

        y[i] = gain[b] * audio[b, i - shift[b]]           (0 where i - shift[b] is outside the clip)
        y += max(rms(y), rms_floor) * noise_mult[b] * bank.flatten()[noise_start[b] + i]

    ``noise_mult`` is 0 for rows without noise. See :meth:`sctrain.audio.augment.WaveAugment.forward`."""
    kernels = _module()
    if audio.dim() != 2 or audio.dtype not in (torch.int16, torch.float32):
        raise ValueError(f"expected int16 or float32 audio [B, T], got {audio.dtype} {tuple(audio.shape)}")
    batch, length = audio.shape
    audio = audio.contiguous()
    out = torch.empty(batch, length, dtype=torch.float32)
    kernels.augment_wave(
        audio.numpy(), audio.dtype == torch.int16, length, out.numpy(),
        shift.to(torch.int64).contiguous().numpy(), gain.to(torch.float32).contiguous().numpy(),
        bank.to(torch.float32).contiguous().numpy(), noise_start.to(torch.int64).contiguous().numpy(),
        noise_mult.to(torch.float32).contiguous().numpy(), rms_floor, _threads(batch, CLIPS_PER_THREAD, threads))
    return out


def describe() -> str:
    """One line: whether the kernels are built and in use."""
    if _cpu_kernels is None:
        return ("compiled kernels not built, PyTorch ops in use (slower; reinstall with a C compiler "
                "present, e.g. `pip install -e .`, to build sctrain.audio._cpu_kernels)")
    if not available():
        return f"compiled kernels built but off ({DISABLE_ENV}=0), PyTorch ops in use"
    return f"compiled kernels in use ({_cpu_kernels.__file__})"


def main() -> int:
    print(f"sctrain.audio.cpu_kernels: {describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

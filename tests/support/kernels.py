"""Running the same seeded front-end work once with the compiled CPU kernels and once with PyTorch's ops."""
from __future__ import annotations

from typing import Callable

import torch


def on_both_paths(monkeypatch, run: Callable[[], torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """``{"1": kernels, "0": PyTorch}``: ``run()`` under each setting of ``SCTRAIN_CPU_KERNELS``, from ``seed``."""
    from sctrain.audio import cpu_kernels

    out = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(cpu_kernels.DISABLE_ENV, setting)
        torch.manual_seed(seed)
        out[setting] = run()
    return out

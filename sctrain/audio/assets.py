"""The recordings that augmentation stages draw from, placed on the device with the front end.

One holder for every bank (background noise, room impulse responses), as non-persistent buffers:
``.to(device)`` moves them with the model's front end, and checkpoints stay free of megabytes of audio.
The noise bank comes packed with the dataset (the training stretch of each recording); impulse
responses are generated from a fixed seed or loaded from ``augment.rir_dir`` at start (a few MB at most).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from sctrain.audio.constants import SAMPLE_RATE
from sctrain.config import AugmentConfig


class AugmentAssets(nn.Module):
    """``noise [recordings, samples]`` and ``rirs [responses, taps]``, float32 (either may have no rows)."""

    def __init__(self, noise: Optional[Tensor] = None, rirs: Optional[Tensor] = None) -> None:
        super().__init__()
        for name, bank in (("noise", noise), ("rirs", rirs)):
            bank = torch.zeros(0, 1) if bank is None else torch.as_tensor(bank)
            if bank.dim() != 2:
                raise ValueError(f"the {name} bank must be [rows, samples], got shape {tuple(bank.shape)}")
            self.register_buffer(name, bank.float().contiguous(), persistent=False)

    @classmethod
    def for_config(cls, cfg: AugmentConfig, noise: Optional[np.ndarray | Tensor] = None,
                   sample_rate: int = SAMPLE_RATE) -> "AugmentAssets":
        """The banks ``cfg`` needs: the given noise, and impulse responses when reverberation is on."""
        from sctrain.audio import rir

        rirs = None
        if cfg.reverb_p > 0:
            rirs = (rir.load_rirs(cfg.rir_dir, sample_rate) if cfg.rir_dir else
                    rir.generated_rirs(cfg.rir_count, cfg.rt60_min, cfg.rt60_max, cfg.rir_seed, sample_rate))
            rirs = torch.from_numpy(rirs)
        return cls(None if noise is None else torch.as_tensor(np.asarray(noise)), rirs)

"""Weight initialisations shared by model families."""
from __future__ import annotations

from torch import nn


def xavier_uniform(module: nn.Module, kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)) -> None:
    """Xavier (Glorot) uniform weights and zero biases for every layer of ``kinds`` in ``module``: the
    TensorFlow and NeMo default that the reference implementations of several families train with."""
    for m in module.modules():
        if isinstance(m, kinds):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

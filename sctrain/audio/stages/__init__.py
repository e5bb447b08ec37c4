"""Waveform augmentation as ordered stages: each stage one module with its own draw and apply.

A stage draws every random choice for a batch in :meth:`Stage.draw` (from the global torch RNG, which the
trainer seeds and checkpoints, so a resumed run augments the same way), then applies them in
:meth:`Stage.apply`; :class:`sctrain.audio.augment.WaveAugment` runs the enabled stages in ``order``.
A new stage is one module here (found by importing this package's modules) plus its keys in
:class:`sctrain.config.AugmentConfig`; its recordings, if any, come from
:class:`sctrain.audio.assets.AugmentAssets`.

The order is the physics of a recording: a level (gain), where the word sits in the window (shift), the
room it was said in (reverb), then what else was sounding (noise): reverberation before noise, since the
background is not in the speaker's room impulse response.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from sctrain.config import AugmentConfig

_STAGES: dict[str, type["Stage"]] = {}


class Stage(nn.Module):
    """One augmentation step of ``[B, T]`` float waves (the first stage also takes int16)."""

    name: ClassVar[str]
    order: ClassVar[int]  # position in the chain: lower runs first

    @staticmethod
    def enabled(cfg: AugmentConfig) -> bool:
        """Whether ``cfg`` turns this stage on (a disabled stage draws nothing: the RNG stream is unchanged)."""
        raise NotImplementedError

    def draw(self, batch: int, length: int, device: torch.device, int16: bool) -> Any:
        """Every random choice for a batch, from the global RNG of ``device``."""
        raise NotImplementedError

    def apply(self, wave: Tensor, draw: Any) -> Tensor:
        """``draw`` applied to ``wave`` with PyTorch ops (any device)."""
        raise NotImplementedError


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: adds a stage to the chain at its ``order``."""
    if cls.name in _STAGES and _STAGES[cls.name] is not cls:
        raise ValueError(f"augmentation stage {cls.name!r} is registered twice")
    _STAGES[cls.name] = cls
    return cls


def stage_classes() -> list[type[Stage]]:
    """Every registered stage, in chain order (this package's modules are imported on first use)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return sorted(_STAGES.values(), key=lambda cls: cls.order)


def find_stage(stages: nn.ModuleList, name: str) -> Optional[Stage]:
    """The stage called ``name`` in a chain, or None when the config leaves it out."""
    return next((s for s in stages if s.name == name), None)

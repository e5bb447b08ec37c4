"""The model registry: ``@register_model`` on each family's builder, :func:`create_model` as the one way in.

In the spirit of timm's registry. A family is a builder ``(section, num_classes, n_features, frames) ->
nn.Module`` taking ``[B, 1, n_features, frames]`` features to ``[B, num_classes]`` logits, where
``section`` is the family's own typed config section (``model.<name>`` in :mod:`sctrain.config`). Training,
SyncBatchNorm, the CPU inference copy, export, streaming, the latency benchmark and checkpoint loading
all go through here and never name a network class; the tests are parametrised over :func:`list_models`,
so a family is tested the day it is registered.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from sctrain.audio.features import feature_shape
from sctrain.config import ConfigError

# Modules that register a family when imported; importing them lazily keeps ``sctrain.models.registry``
# importable from the family modules themselves.
FAMILY_MODULES = tuple(f"sctrain.models.{name}" for name in ("kwsnet", "bcresnet", "matchboxnet", "tcresnet", "dscnn",
                                                                 "kwt"))


@dataclass(frozen=True)
class ModelFamily:
    name: str
    build: Callable[[Any, int, int, int], nn.Module]
    # Builds the CPU inference copy from a trained network (see sctrain.models.folding); its class has a
    # ``description`` that the latency benchmark prints.
    cpu_copy: Callable[[nn.Module], nn.Module]
    # Config values of a tiny variant: the registry-parametrised tests train and export it in seconds.
    test_size: dict = field(default_factory=dict)
    # The front end the family's paper used (FeatureConfig keys); configs/models/<name>.yaml sets it.
    features: dict = field(default_factory=dict)
    doc: str = ""


_FAMILIES: dict[str, ModelFamily] = {}


def register_model(name: str, *, cpu_copy: Callable[[nn.Module], nn.Module], test_size: dict | None = None,
                   features: dict | None = None):
    """Decorator: register ``build`` as the family ``name`` (its config section is ``model.<name>``)."""

    def decorate(build: Callable[[Any, int, int, int], nn.Module]):
        if name in _FAMILIES and _FAMILIES[name].build is not build:
            raise ValueError(f"model family {name!r} is registered twice")
        _FAMILIES[name] = ModelFamily(name, build, cpu_copy, dict(test_size or {}), dict(features or {}),
                                      (build.__doc__ or "").strip())
        return build

    return decorate


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Registered family names, sorted."""
    _load_families()
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    _load_families()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}: registered are {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def model_section(model_cfg: Any) -> Any:
    """The config section of the family that ``model_cfg.name`` selects."""
    return getattr(model_cfg, model_cfg.name)


def create_model(model_cfg: Any, features_cfg: Any, num_classes: int) -> nn.Module:
    """The network ``model_cfg`` (a :class:`sctrain.config.ModelConfig`) describes, freshly initialised, for
    the features ``features_cfg`` (a :class:`sctrain.config.FeatureConfig`) computes."""
    n_features, frames = feature_shape(features_cfg)
    try:
        return get_family(model_cfg.name).build(model_section(model_cfg), num_classes, n_features, frames)
    except ValueError as e:  # a size the network cannot be built at: a config mistake, said in one line
        raise ConfigError(f"config section 'model.{model_cfg.name}': {e}") from None


def cpu_inference_copy(model_cfg: Any, net: nn.Module) -> nn.Module:
    """The family's CPU inference copy of a trained ``net`` (eval only; same logits up to rounding)."""
    return get_family(model_cfg.name).cpu_copy(net).eval()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

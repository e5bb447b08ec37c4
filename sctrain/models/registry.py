"""The model registry: ``@register_model`` on each family's builder, :func:`create_model` as the one way in.

In the spirit of timm's registry. A family is one module under ``sctrain/models/``: its typed config section
(a dataclass, ``model.<name>`` in the config tree), its builder ``(section, num_classes, n_features, frames)
-> nn.Module`` taking ``[B, 1, n_features, frames]`` features to ``[B, num_classes]`` logits, and the
``register_model`` call that names both with the family's variants and traits. The families are found by
importing every module of :mod:`sctrain.models` (no list to keep), and :class:`sctrain.config.ModelConfig` is
made from them. Training, SyncBatchNorm, the CPU inference copy, export, streaming, the latency benchmark and
checkpoint loading all go through here and never name a network class; the tests are parametrised over
:func:`list_models` and the traits, so a family is tested the day it is registered.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

# How a family reads its ``[B, 1, F, T]`` input: 'image' (2-D convolutions over frequency x time), 'channels'
# (1-D convolutions over time, the F features as channels) or 'tokens' (one token per frame: the network is
# built for exactly ``frames`` frames).
INPUT_KINDS = ("image", "channels", "tokens")


# model.<family>.time_padding of the families that can stream with state (sctrain.inference.stateful).
TIME_PADDINGS = ("same", "valid")
TIME_PADDING_DOC = ("same: convolutions zero-pad in time (frames at a window's edges see zeros); valid: no padding "
                    "in time and time pools drop a ragged last frame, so the network can stream with state "
                    "(python -m sctrain.export --streaming, with features.center: false and features.normalise: "
                    "none)")



@dataclass(frozen=True)
class ModelFamily:
    name: str
    build: Callable[[Any, int, int, int], nn.Module]
    # The dataclass of the family's config section model.<name>: its fields are the keys, its __post_init__
    # validates them.
    config: type
    # Builds the CPU inference copy from a trained network (see sctrain.models.folding); its class has a
    # ``description`` that the latency benchmark prints.
    cpu_copy: Callable[[nn.Module], nn.Module]
    # Named sizes of the family (its papers' variants), as the config values that select them.
    variants: dict = field(default_factory=dict)
    # Whether the network normalises with BatchNorm (folded into the convolutions of the CPU copy, synced
    # across processes by train.sync_bn); without it the family has none of either.
    batchnorm: bool = True
    input: str = "image"
    # Config values of a tiny variant: the registry-parametrised tests train and export it in seconds.
    test_size: dict = field(default_factory=dict)
    # The front end the family's paper used (FeatureConfig keys); configs/models/<name>.yaml sets it.
    features: dict = field(default_factory=dict)
    doc: str = ""


_FAMILIES: dict[str, ModelFamily] = {}
_discovered = False


def register_model(name: str, *, config: type, cpu_copy: Callable[[nn.Module], nn.Module],
                   variants: dict | None = None, batchnorm: bool = True, input: str = "image",
                   test_size: dict | None = None, features: dict | None = None):
    """Decorator: register ``build`` as the family ``name``, configured by the dataclass ``config`` (the
    section ``model.<name>``)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"model family {name!r}: config must be a dataclass, got {config!r}")
    if input not in INPUT_KINDS:
        raise ValueError(f"model family {name!r}: input must be one of {', '.join(INPUT_KINDS)}, got {input!r}")
    keys = {f.name for f in dataclasses.fields(config)}
    named = {"test_size": test_size or {}, **{f"variant {v!r}": c for v, c in (variants or {}).items()}}
    for label, values in named.items():
        if not set(values) <= keys:
            raise ValueError(f"model family {name!r}: {label} sets {sorted(set(values) - keys)}, not keys of "
                             f"{config.__name__}")

    def decorate(build: Callable[[Any, int, int, int], nn.Module]):
        if name in _FAMILIES and _FAMILIES[name].build is not build:
            raise ValueError(f"model family {name!r} is registered twice")
        _FAMILIES[name] = ModelFamily(name, build, config, cpu_copy, dict(variants or {}), batchnorm, input,
                                      dict(test_size or {}), dict(features or {}), (build.__doc__ or "").strip())
        return build

    return decorate


def _discover() -> None:
    """Import every module of this package once: the ones that define a family register it."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    _discovered = True


def list_models() -> list[str]:
    """Registered family names, sorted."""
    _discover()
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    _discover()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}: registered are {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def model_section(model_cfg: Any) -> Any:
    """The config section of the family that ``model_cfg.name`` selects."""
    return getattr(model_cfg, model_cfg.name)


def create_model(model_cfg: Any, features_cfg: Any, num_classes: int) -> nn.Module:
    """The network ``model_cfg`` (a :class:`sctrain.config.ModelConfig`) describes, freshly initialised, for
    the features ``features_cfg`` (a :class:`sctrain.config.FeatureConfig`) computes."""
    # Imported here: sctrain.config makes ModelConfig from this module, so this module imports no config code
    # at its top.
    from sctrain.audio.features import feature_shape
    from sctrain.config import ConfigError

    n_features, frames = feature_shape(features_cfg)
    try:
        return get_family(model_cfg.name).build(model_section(model_cfg), num_classes, n_features, frames)
    except ValueError as e:  # a size the network cannot be built at: a config mistake, said in one line
        raise ConfigError(f"config section 'model.{model_cfg.name}': {e}") from None


def cpu_inference_copy(model_cfg: Any, net: nn.Module) -> nn.Module:
    """The family's CPU inference copy of a trained ``net`` (eval only; same logits up to rounding)."""
    return get_family(model_cfg.name).cpu_copy(net).eval()


def describe_models() -> str:
    """Two lines per registered family: its name and summary, then its traits and variants (``--list-models``)."""
    lines = []
    for family in map(get_family, list_models()):
        traits = f"input {family.input}, {'BatchNorm' if family.batchnorm else 'no BatchNorm'}"
        variants = ", ".join(f"{v} ({' '.join(f'{k}={x}' for k, x in c.items())})" for v, c in family.variants.items())
        lines += [f"  {family.name:<12} {(family.doc.splitlines() or [''])[0]}",
                  f"  {'':<12} {traits}" + (f"; variants (model.{family.name}.*): {variants}" if variants else "")]
    return "\n".join(lines)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""The search space of ``python -m sctrain.tune``: dotted config keys and the values a trial may give them.

A space file is YAML, one entry per key::

    train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}   # a float range (log: sampled on a log scale)
    train.epochs: {low: 6, high: 12}                    # an integer key takes an integer range (step optional)
    model.kwsnet.width: {choices: [16, 24, 32]}         # any key: a list of values

Every bound and choice is checked by building the config with it, so a space that would give a trial a value the
config refuses fails before the first trial, in one line naming the file and the key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from sctrain.config import Config, ConfigError, key_type, load_config
from sctrain.utils import first_line

RANGE_KEYS = {"low", "high", "log", "step"}
# Keys the tuner sets itself on every trial.
RESERVED = ("output_dir", "tracking.group")
# The width (or size) of each family that the default space draws; a family not listed is searched without one.
FAMILY_WIDTH = {
    "kwsnet": ("width", [16, 24, 32, 48]),
    "bcresnet": ("width", [1.0, 1.5, 2.0, 3.0]),
    "tcresnet": ("width_multiplier", [1.0, 1.5, 2.0]),
    "matchboxnet": ("channels", [32, 64, 96]),
    "dscnn": ("size", ["S", "M", "L"]),
    "kwt": ("size", [1, 2]),
}


class SpaceError(ConfigError):
    """A search-space problem; one line naming the file and the key."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (``kind`` int or float) or a list of ``choices``."""

    key: str
    kind: str  # "int", "float" or "choices"
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: Optional[tuple] = None

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this key (an ``optuna.Trial``: its sampler draws it, or an enqueued trial fixes it)."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def values_to_check(self) -> list:
        return list(self.choices) if self.kind == "choices" else [self.low, self.high]


def override(key: str, value: Any) -> str:
    """``key=value`` as the command line writes it (the config parses it back to the key's type)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return f"{key}={text}"


def default_space(cfg: Config) -> dict:
    """The space searched without ``--space``: around the config's own learning rate, weight decay and augmentation
    probabilities from off to always, MixUp up to half the batches, the family's width, and from half the
    config's epochs to all of them."""
    lr = cfg.train.lr
    space: dict = {
        "train.lr": {"low": _round(lr / 3), "high": _round(lr * 3), "log": True},
        "train.weight_decay": {"low": 1.0e-4, "high": 0.1, "log": True},
        "augment.mixup_p": {"low": 0.0, "high": 0.5},
        "augment.shift_p": {"low": 0.0, "high": 1.0},
        "augment.noise_p": {"low": 0.0, "high": 1.0},
    }
    if cfg.model.name in FAMILY_WIDTH:
        name, choices = FAMILY_WIDTH[cfg.model.name]
        space[f"model.{cfg.model.name}.{name}"] = {"choices": list(choices)}
    if cfg.train.epochs > 1:
        space["train.epochs"] = {"low": max(1, cfg.train.epochs // 2), "high": cfg.train.epochs}
    return space


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def read_space_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpaceError(f"search space {path} is not valid YAML: {first_line(e)}") from None
    return raw


def parse_space(raw: Any, where: str, config_path: Optional[str | Path] = None,
                overrides: Optional[list[str]] = None) -> list[Dimension]:
    """The dimensions of a space mapping (from a file named ``where``, or the default); each bound and choice is
    checked against the config (``config_path`` + ``overrides``)."""
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"search space {where} must map dotted config keys to ranges or choices, got {raw!r}")
    dims = [_dimension(str(key), spec, where) for key, spec in raw.items()]
    for dim in dims:
        for value in dim.values_to_check():
            try:
                load_config(config_path, [*(overrides or []), override(dim.key, value)])
            except ConfigError as e:
                raise SpaceError(f"search space {where}: {dim.key}={value!r} is refused: {e}") from None
    return dims


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    def fail(message: str) -> SpaceError:
        return SpaceError(f"search space {where}: key '{key}': {message}")

    try:
        tp = key_type(key)
    except ConfigError as e:
        raise SpaceError(f"search space {where}: {e}") from None
    if key in RESERVED:
        raise fail("is set by the tuner for every trial; leave it out of the space")
    if not isinstance(spec, dict):
        raise fail(f"must be {{low: .., high: ..}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise fail(f"takes choices alone, got also {', '.join(sorted(set(spec) - {'choices'}))}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise fail(f"choices must be a non-empty list, got {choices!r}")
        if any(c is not None and not isinstance(c, (bool, int, float, str)) for c in choices):
            raise fail(f"choices must be numbers, strings, booleans or null, got {choices!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise fail(f"choices name a value twice: {choices!r}")
        return Dimension(key, "choices", choices=tuple(choices))
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        raise fail(f"unknown field(s) {', '.join(sorted(map(str, unknown)))} (a range takes low, high, log, step)")
    if "low" not in spec or "high" not in spec:
        raise fail("a range needs both low and high")
    if tp not in (int, float):
        raise fail(f"is a {getattr(tp, '__name__', tp)} key: give it {{choices: [...]}}, not a range")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
        raise fail(f"low, high and step must be finite numbers, got {spec!r}")
    if tp is int and not all(isinstance(v, int) for v in numbers):
        raise fail(f"is an integer key: low, high and step must be integers, got {spec!r}")
    if not isinstance(log, bool):
        raise fail(f"log must be true or false, got {log!r}")
    if not low < high:
        raise fail(f"low must be below high, got {low} and {high}")
    if log and low <= 0:
        raise fail(f"a log range needs low > 0, got {low}")
    if log and step is not None:
        raise fail("takes log or step, not both")
    if step is not None and step <= 0:
        raise fail(f"step must be > 0, got {step}")
    kind = "int" if tp is int else "float"
    cast = int if tp is int else float
    return Dimension(key, kind, cast(low), cast(high), log, cast(step) if step is not None else None)

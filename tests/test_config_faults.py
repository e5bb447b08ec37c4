"""Bad inputs to the config loader and to checkpoint loading: each is a one-line error naming the key or the file,
and the valid inputs next to them still load."""
from __future__ import annotations

import dataclasses
import gzip
import pickle
import random
import typing

import pytest
import torch
import yaml

from sctrain import config
from sctrain.artifacts import best
from sctrain.artifacts import files as artifact_files
from sctrain.artifacts.files import CheckpointError
from sctrain.config import Config, ConfigError, load_config
from sctrain.training.checkpoint import files as checkpoint
from sctrain.utils import shorten


def one_line_error(exc_type: type, call, *args) -> str:
    with pytest.raises(exc_type) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def float_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += float_keys(tp, f"{prefix}{f.name}.")
        elif tp is float:
            keys.append(prefix + f.name)
    return keys


def write(tmp_path, text: str | bytes, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ------------------------------------------------------------------------------------ non-finite numbers

@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "Infinity", "1e999"])
def test_non_finite_overrides_are_rejected_for_every_float_key(value):
    keys = float_keys()
    assert "train.lr" in keys and "augment.gain_db" in keys and len(keys) > 10
    shown = {"Infinity": "inf", "1e999": "inf"}.get(value, value)
    for key in keys:
        message = one_line_error(ConfigError, load_config, None, [f"{key}={value}"])
        assert message == f"config key '{key}': must be a finite number, got {shown}"


@pytest.mark.parametrize("text, shown", [(".inf", "inf"), (".nan", "nan"), ("-.inf", "-inf"), ("'inf'", "inf"),
                                         ("1" + "0" * 400, "inf")])
def test_non_finite_yaml_values_are_rejected(tmp_path, text, shown):
    message = one_line_error(ConfigError, load_config, write(tmp_path, f"train:\n  lr: {text}\n"))
    assert message == f"config key 'train.lr': must be a finite number, got {shown}"
    path = write(tmp_path, f"augment:\n  gain_db: {text}\n")  # a key whose range check (>= 0) inf would pass
    assert one_line_error(ConfigError, load_config, path).startswith("config key 'augment.gain_db': must be a finite")


def test_non_finite_values_in_a_saved_config_are_rejected():
    values = Config().to_dict()
    values["train"]["grad_clip"] = float("nan")
    message = one_line_error(ConfigError, config.config_from_dict, values)
    assert message == "config key 'train.grad_clip': must be a finite number, got nan"


# ------------------------------------------------------------------------------------ numbers written as strings

@pytest.mark.parametrize("text", ["1e-3", "1E-3", "0.001", "1.0e-3", "'1e-3'"])
def test_yaml_floats_in_exponent_form_load(tmp_path, text):
    assert load_config(write(tmp_path, f"train:\n  lr: {text}\n")).train.lr == 0.001


def test_yaml_int_for_a_float_key_loads_as_a_float(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 3\n  warmup_epochs: 2e0\n"))
    assert (cfg.train.lr, cfg.train.warmup_epochs) == (3.0, 2.0) and type(cfg.train.lr) is float


@pytest.mark.parametrize("text, expected", [
    ("train:\n  lr: abc\n", "config key 'train.lr': must be a float, got 'abc' (str)"),
    ("train:\n  lr: 1e-3x\n", "config key 'train.lr': must be a float, got '1e-3x' (str)"),
    ("train:\n  epochs: 1e3\n", "config key 'train.epochs': must be a int, got '1e3' (str)"),  # floats only
])
def test_yaml_strings_that_are_not_floats_stay_errors(tmp_path, text, expected):
    assert expected in one_line_error(ConfigError, load_config, write(tmp_path, text))


# ------------------------------------------------------------------------------------ duplicate keys

@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs: 3\nmodel:\n  width: 8\ntrain:\n  lr: 0.1\n", "duplicate key 'train' (lines 1 and 5)"),
    ("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n", "duplicate key 'epochs' (lines 2 and 4)"),
    ("augment: {mask_p: 0.1, mask_p: 0.2}\n", "duplicate key 'mask_p' (twice on line 1)"),
    ("tracking:\n  tags: [a, {x: 1, x: 2}]\n", "duplicate key 'x' (twice on line 2)"),
])
def test_duplicate_keys_are_errors_naming_file_key_and_lines(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = one_line_error(ConfigError, load_config, path)
    assert message.startswith(f"config file {path} ") and expected in message


def test_a_key_overriding_a_merged_one_is_no_duplicate(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  <<: {epochs: 3, lr: 0.5}\n  lr: 0.1\n"))
    assert (cfg.train.epochs, cfg.train.lr) == (3, 0.1)
    # A merge source that merges and overrides itself is flattened in place by the mapping that merges it, maybe
    # before it is built itself: its keys are checked once, as written.
    text = "t: &t {k: 1}\na:\n  x: &s {<<: *t, k: 2}\nb:\n  <<: *s\n"
    assert yaml.load(text, Loader=config._StrictLoader) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'k' \(lines 1 and 2\)"):
        yaml.load("a: &s {k: 1,\n  k: 2}\nb: {<<: *s}\n", Loader=config._StrictLoader)


# ------------------------------------------------------------------------------------ files that are not YAML text

@pytest.mark.parametrize("data, detail", [
    (random.Random(0).randbytes(200), "is not utf-8"),
    (gzip.compress(b"train:\n  epochs: 3\n"), "byte 0x8b at offset 1 is not utf-8"),
    (b"train:\n  epochs: 3\x00\n", "control character U+0000 at offset 18"),
])
def test_binary_config_file_is_not_a_text_yaml_file(tmp_path, data, detail):
    path = write(tmp_path, data)
    message = one_line_error(ConfigError, load_config, path)
    assert message.startswith(f"config file {path} is not a text YAML file (") and detail in message


def test_text_config_files_in_other_encodings_still_load(tmp_path):
    assert load_config(write(tmp_path, "# é\ntrain:\n  epochs: 5\n")).train.epochs == 5
    assert load_config(write(tmp_path, "train:\n  epochs: 6\n".encode("utf-16"))).train.epochs == 6  # has a BOM
    assert load_config(write(tmp_path, "\ufefftrain:\n  epochs: 7\n")).train.epochs == 7


def test_a_folder_as_config_is_named_as_a_folder(tmp_path):
    assert one_line_error(ConfigError, load_config, tmp_path) == f"config file {tmp_path} is a folder, not a YAML file"
    assert "not found" in one_line_error(ConfigError, load_config, tmp_path / "missing.yaml")


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing set\n"])
def test_an_empty_config_file_gives_the_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == Config()


# ------------------------------------------------------------------------------------ checkpoints

def real_checkpoint(path):
    artifact_files.atomic_save({"format": best.BEST_FORMAT, "model": {"w": torch.randn(1000)}, "labels": ["a"],
                            "config": {}}, path)
    return path


def test_a_folder_as_checkpoint_is_named_as_a_folder_and_state_folders_still_load(tmp_path):
    message = one_line_error(CheckpointError, best.load_best, tmp_path)
    assert message == f"checkpoint {tmp_path} is a folder, not a checkpoint file"
    payload = {"progress": {"epoch": 0, "step_in_epoch": 3, "global_step": 3}, "model": {}, "optimizer": {},
               "scheduler": {}, "rng": []}
    folder = checkpoint.save_state(tmp_path, 3, payload, keep_last=2)
    assert checkpoint.load_state(folder)["progress"]["global_step"] == 3  # load_state looks inside the folder
    assert checkpoint.load_state(folder / checkpoint.STATE_FILE)["progress"]["global_step"] == 3
    empty = tmp_path / "state" / "step_000000009"
    empty.mkdir()
    assert "checkpoint not found" in one_line_error(CheckpointError, checkpoint.load_state, empty)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = write(tmp_path, b"\x07" + random.Random(1).randbytes(199), "best_sc.pt")
    message = one_line_error(CheckpointError, best.load_best, path)
    assert message == (f"{path} is not a checkpoint (corrupt or foreign: neither a torch zip archive nor a pickle, "
                       f"first bytes {path.read_bytes()[:4].hex(' ')})")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, for the bare pickle
@pytest.mark.parametrize("kind, expected", [
    ("empty", "is truncated or corrupt (the file is empty)"),
    ("truncated", "is truncated or corrupt (PytorchStreamReader failed reading zip archive"),
    ("cut after the zip magic", "is truncated or corrupt ("),
    ("bare pickle", "is not a checkpoint (corrupt or foreign: a plain pickle, not a file torch.save wrote)"),
    ("foreign object", "cannot be loaded safely (it holds torch.nn.modules.linear.Linear, which weights-only loading"),
    ("text", "is not a checkpoint (corrupt or foreign: a text file starting 'version https://git-lfs"),
    ("gzip", "is not a checkpoint (corrupt or foreign: neither a torch zip archive nor a pickle, first bytes 1f 8b"),
])
def test_each_kind_of_bad_checkpoint_has_its_own_clear_message(tmp_path, kind, expected):
    path = tmp_path / "best_sc.pt"
    data = real_checkpoint(path).read_bytes()
    if kind == "foreign object":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "cut after the zip magic": data[:2],
                          "bare pickle": pickle.dumps({"format": best.BEST_FORMAT}),
                          "text": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 5588\n",
                          "gzip": gzip.compress(data)}[kind])
    message = one_line_error(CheckpointError, best.load_best, path)
    assert str(path) in message and expected in message
    assert "Weights only load failed" not in message and "\x1b" not in message


def test_real_checkpoints_still_load(tmp_path):
    assert best.load_best(real_checkpoint(tmp_path / "best_sc.pt"))["labels"] == ["a"]


@pytest.mark.parametrize("text, limit", [("word " * 60, 120), ("a" * 50 + " tail", 30), ("one two three", 11)])
def test_long_reasons_are_cut_at_a_word_boundary(text, limit):
    short = shorten(text, limit)
    assert len(short) <= limit and short.endswith("...")
    kept = short[:-3]
    assert text.startswith(kept) and (text[len(kept)] == " " or " " not in text[:limit])

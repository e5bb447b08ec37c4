"""Config tree: strict keys, typed overrides, one-line errors, every shipped config loads."""

import pytest
import yaml
from support import REPO

import sctrain.config
from sctrain.config import ConfigError, config_from_dict, describe, dump_config, load_config
from sctrain.models.kwsnet import KWSNetConfig
from sctrain.models.registry import list_models


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_strictly(path):
    cfg = load_config(path)
    assert cfg.train.epochs >= 1


def test_overrides_are_parsed_to_field_types():
    cfg = load_config(None, ["train.epochs=3", "data.root=/x", "model.kwsnet.width=16", "train.lr=1e-3",
                             "train.compile=true", "tracking.tags=a,b", "tracking.entity=null"])
    assert (cfg.train.epochs, cfg.data.root, cfg.model.kwsnet.width) == (3, "/x", 16)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.compile is True
    assert cfg.tracking.tags == ["a", "b"] and cfg.tracking.entity is None


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=0.02"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.02 and cfg.train.batch_size == 128


@pytest.mark.parametrize("override, expected", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("epochs=3", "did you mean 'train.epochs'"),
    ("train.epochs=abc", "config key 'train.epochs': must be a int"),
    ("train.lr=-1", "config key 'train.lr'"),
    ("augment.mixup_p=1.5", "config key 'augment.mixup_p'"),
    ("train.precision=fp8", "config key 'train.precision'"),
    ("train=3", "is a section"),
    ("data.placement=gpu", "config key 'data.placement': must be auto, loader or device, got 'gpu'"),
    ("data.device_memory_share=0", "config key 'data.device_memory_share': must be in (0, 1]"),
    ("train.compile_mode=fast", "config key 'train.compile_mode': must be one of default, reduce-overhead"),
    ("train.compile_mode=reduce-overhead", "reduce-overhead takes effect only with train.compile=true"),
    ("train.stop_at_val_acc=1.5", "config key 'train.stop_at_val_acc': must be in [0, 1]"),
    ("nonsense", "not of the form dotted.key=value"),
])
def test_bad_overrides_give_one_line_errors(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_yaml_type_errors_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: '3'\n")
    with pytest.raises(ConfigError, match="'train.epochs': must be a int"):
        load_config(path)
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'train"):
        load_config(path)
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="'train': must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(REPO / "configs" / "debug.yaml", ["train.seed=5"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


def test_every_field_is_documented():
    text = describe()
    assert "train.epochs" in text and "data.root" in text
    for line in text.splitlines():
        if line.strip().startswith(("train.", "data.", "model.", "augment.")) and " = " in line:
            continue
    assert "None\n      \n" not in text


def test_family_sections_keep_their_keys_and_errors(tmp_path):
    """model.<family> sections come from the registry and are as strict as the rest of the tree."""
    cfg = load_config(None, ["model.name=kwt", "model.kwt.size=2", "model.bcresnet.width=1.5"])
    assert (cfg.model.name, cfg.model.kwt.size, cfg.model.bcresnet.width) == ("kwt", 2, 1.5)
    with pytest.raises(ConfigError, match=r"^unknown config key 'model.kwt.dim' \(did you mean"):
        load_config(None, ["model.kwt.dim=3"])
    with pytest.raises(ConfigError, match=r"^config key 'model.kwt.size': must be 1, 2 or 3, got 4$"):
        load_config(None, ["model.kwt.size=4"])
    with pytest.raises(ConfigError, match=r"^config key 'model.kwsnet' is a section"):
        load_config(None, ["model.kwsnet=3"])
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  dscnn:\n    size: M\n    widht: 2\n")
    with pytest.raises(ConfigError, match=r"^unknown config key 'model.dscnn.widht'"):
        load_config(path)
    assert "\nmodel.kwsnet: " in describe() and "  model.kwsnet.width = 32\n" in describe()


def test_saved_model_section_layout():
    """config.yaml's model section: the family name, then every family's section with plain values."""
    saved = load_config(REPO / "configs" / "debug.yaml").to_dict()["model"]
    assert list(saved) == ["name", *list_models()]
    assert saved["kwsnet"] == {"width": 16, "dropout": 0.1, "time_padding": "same"}
    assert yaml.safe_load(yaml.safe_dump(saved)) == saved  # plain YAML: no Python tags


def test_family_sections_keep_their_old_import_names():
    assert sctrain.config.KWSNetConfig is KWSNetConfig
    with pytest.raises(AttributeError):
        sctrain.config.NoSuchConfig  # noqa: B018

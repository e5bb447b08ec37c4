"""docs/configuration.md is generated from the config tree; the committed page must be what the code generates."""
import dataclasses
import functools
import re

from support import REPO

from sctrain import config_reference
from sctrain.config import Config, _all_keys


def test_committed_page_is_the_generated_one():
    page = REPO / "docs" / "configuration.md"
    assert page.read_text() == config_reference.render(), (
        f"docs/configuration.md is stale: run {config_reference.COMMAND} and commit it")


def test_every_key_with_its_default_and_help():
    text = config_reference.render()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| (.+)$", text, re.M))
    assert sorted(rows) == sorted(_all_keys())
    defaults = Config()  # the values a run gets, read from an instance rather than from the fields
    for key, row in rows.items():
        value = functools.reduce(getattr, key.split("."), defaults)
        assert f"| `{config_reference._yaml(value)}` |" in row, (key, row)
    assert rows["kws.calibrate"].startswith("bool or null | `null` | after training, choose per-keyword")
    # Every registered family's section, with its variants from the registry.
    assert "**14-1.5**: `model.tcresnet.depth=14`, `model.tcresnet.width_multiplier=1.5`" in text
    for name in [f.name for f in dataclasses.fields(Config) if f.name != "output_dir"]:
        assert f"## `{name}`" in text


def test_check_says_when_the_page_is_stale(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    assert config_reference.main(["--out", str(page)]) == 0
    assert config_reference.main(["--out", str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("peak learning rate", "learning rate"))
    assert config_reference.main(["--out", str(page), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err

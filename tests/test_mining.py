"""Hard-negative mining (python -m sctrain.mine) and the two keys it builds on: train.init_from and
data.train_negatives."""
import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from support import REPO, train_on_one_thread, trainer_for

from sctrain.artifacts.best import load_best
from sctrain.cli.mine import main
from sctrain.config import ConfigError, load_config
from sctrain.data.pack import load_dataset


def tiny(root, out, *extra):
    return load_config(REPO / "configs/debug.yaml", [
        f"data.root={root}", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'run'}", "data.task=keywords",
        "data.keywords=yes,no,up", "data.num_workers=0", "model.kwsnet.width=8", "train.epochs=1",
        "train.batch_size=32", "train.checkpoint_every=0", "latency.enabled=false", "tracking.report=false",
        "tracking.log_examples=0", "tracking.mode=disabled", "kws.calibrate=true", "kws.validation_minutes=0.3",
        "kws.test_minutes=0.3", "kws.negative_minutes=0.5", "kws.test_negative_minutes=0.3", *extra])


@pytest.fixture(scope="module")
def detector_run(synthetic_root, tmp_path_factory):
    # Without the filler gate a barely trained model's keyword posteriors clear a low threshold on negatives:
    # the mining round has windows to learn from.
    out = tmp_path_factory.mktemp("mining")
    train_on_one_thread(tiny(synthetic_root, out, "kws.filler_gate=false"))
    return out / "run"


def test_init_from_starts_from_the_checkpoint_and_checks_it(detector_run, synthetic_root, tmp_path):
    best = detector_run / "best_sc.pt"
    with trainer_for(tiny(synthetic_root, tmp_path, f"train.init_from={best}")) as trainer:
        for name, value in load_best(best)["model"].items():
            assert torch.equal(trainer.raw_model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="train.init_from.*has labels"):
        with trainer_for(tiny(synthetic_root, tmp_path / "other", "data.keywords=yes,no", f"train.init_from={best}")):
            pass


def test_a_mining_round_writes_what_fired_and_fine_tunes_on_it(detector_run, capsys):
    assert main([str(detector_run), "--minutes", "1", "--epochs", "1", "--threshold", "0.05"]) == 0
    report = json.loads((detector_run / "mining" / "mining.json").read_text())
    mined = report["rounds"][1]["mined"]
    files = sorted((detector_run / "mining" / "round1" / "mined").glob("*.wav"))
    assert mined["false_alarms"] == len(files) > 0 and mined["hours"] == pytest.approx(1 / 60, abs=1e-3)
    assert sum(mined["by_keyword"].values()) == len(files)
    assert all(sf.info(str(f)).frames == 16000 and sf.info(str(f)).samplerate == 16000 for f in files)
    assert {f.name.split("_")[0] for f in files} <= {"yes", "no", "up"}  # named by the keyword that fired
    # The fine-tuning run is an ordinary run from the mined-on checkpoint, the windows in its training split.
    round_cfg = load_config(detector_run / "mining" / "round1" / "config.yaml")
    assert round_cfg.train.init_from == str(detector_run / "best_sc.pt")
    assert round_cfg.data.train_negatives == [str(detector_run / "mining" / "round1" / "mined")]
    data = load_dataset(round_cfg.data, progress=False)
    for split in ("train", "validation", "test"):
        count = sum("/round1/mined/" in f for f in data.split(split).files)
        assert count == (len(files) if split == "train" else 0)
    assert (detector_run / "mining" / "round1" / "best_sc.pt").is_file()
    assert "| 0 |" in capsys.readouterr().out and (detector_run / "mining" / "mining.md").is_file()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sctrain.mine", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "is not a finished run folder" in run.stderr

"""``python -m sctrain.tune``: Optuna studies whose trials are real sctrain runs on the generated dataset (tiny
model, one or two epochs): trials in the storage and in their own run folders, pruning, the budget's cut, a study
continued by the same call, an interrupted trial resumed in its folder, and one-line errors for bad spaces."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from support import REPO, one_torch_thread

from sctrain.artifacts.best import load_best
from sctrain.config import load_config
from sctrain.models.registry import get_family, list_models
from sctrain.training.checkpoint.files import list_states

optuna = pytest.importorskip("optuna")

from sctrain.cli import tune as tune_cli  # noqa: E402 - after the skip: it needs optuna
from sctrain.training.trainer import Preempted  # noqa: E402
from sctrain.tuning.space import default_space, parse_space  # noqa: E402
from sctrain.tuning.study import StudySpec, run_study  # noqa: E402

CONFIG = str(REPO / "configs/debug.yaml")
TINY = ["model.kwsnet.width=8", "train.batch_size=16", "train.eval_batch_size=64", "data.num_workers=0",
        "latency.enabled=false", "tracking.report=false", "tracking.mode=disabled", "train.checkpoint_every=0",
        "train.log_every=2"]
SPACE = {"train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}}


@pytest.fixture(autouse=True)
def one_thread():
    """Trials on one thread, as the session fixtures train."""
    with one_torch_thread():
        yield


def make_spec(root: Path, study_dir: Path, *extra: str, budget_minutes=None) -> StudySpec:
    overrides = [f"data.root={root}", *TINY, *extra]
    return StudySpec("tiny", study_dir, CONFIG, overrides, parse_space(SPACE, "(test)", CONFIG, overrides), SPACE,
                     budget_minutes=budget_minutes, startup_trials=1)


def load_study(spec: StudySpec):
    return optuna.load_study(study_name=spec.name, storage=spec.storage_url)


def test_trials_are_real_runs_in_the_storage_and_the_study_continues(synthetic_root, tmp_path):
    spec = make_spec(synthetic_root, tmp_path / "study", "train.epochs=1")
    summary = run_study(spec, trials=2, pruner="none")
    trials = load_study(spec).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].params["train.lr"] != trials[1].params["train.lr"]
    for trial, row in zip(trials, summary["trials"]):
        run = Path(trial.user_attrs["run_dir"])
        assert run == spec.study_dir / f"trial_{trial.number:04d}"
        for name in ("config.yaml", "metrics.jsonl", "best_sc.pt", "results.json"):
            assert (run / name).is_file(), name
        assert list_states(run)  # resumable like any run
        cfg = load_config(run / "config.yaml")
        assert cfg.train.lr == trial.params["train.lr"] and cfg.tracking.group == "tiny"
        assert trial.value == load_best(run / "best_sc.pt")["metrics"]["val_acc"] == row["val_acc"]
        assert row["test_acc"] == trial.user_attrs["test_acc"] and row["wall_s"] > 0 and not row["pruned"]
    assert (spec.study_dir / "study.md").read_text().count("| complete |") == 2

    # The same call with more trials continues the study: the two finished trials stay, one more runs.
    run_study(spec, trials=3, pruner="none")
    again = load_study(spec).get_trials()
    assert len(again) == 3 and [t.params for t in again[:2]] == [t.params for t in trials]
    run_study(spec, trials=3, pruner="none")  # nothing left to run
    assert len(load_study(spec).get_trials()) == 3


def test_a_pruned_trial_stops_after_its_first_epoch(synthetic_root, tmp_path):
    spec = make_spec(synthetic_root, tmp_path / "study", "train.epochs=2")
    # No validation accuracy reaches 1.01: the pruner stops the trial at its first report.
    summary = run_study(spec, trials=1, pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    (trial,) = load_study(spec).get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [0]
    run = Path(trial.user_attrs["run_dir"])
    evals = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"split": "validation"' in line]
    assert len(evals) == 1 and (run / "best_sc.pt").is_file() and not (run / "results.json").exists()
    row = summary["trials"][0]
    assert row["pruned"] and row["epochs_run"] == 1 and row["val_acc"] == trial.intermediate_values[0]


def test_the_budget_cuts_the_running_trial_and_starts_no_other(synthetic_root, tmp_path, capsys):
    # Through the command line: its options make the same study (the default storage in --dir).
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    study_dir = tmp_path / "study"
    rc = tune_cli.main(["--config", CONFIG, "--trials", "3", "--budget-minutes", "0.001", "--space", str(space),
                        "--dir", str(study_dir), "--pruner", "none", f"data.root={synthetic_root}", *TINY,
                        "train.epochs=2"])
    assert rc == 0
    summary = json.loads((study_dir / "study.json").read_text())
    (row,) = summary["trials"]
    assert row["state"] == "complete" and row["cut_by_budget"] and row["epochs_run"] == 1
    assert row["test_acc"] is not None  # a cut trial is still a finished run, tested
    assert summary["study"] == "debug" and summary["storage"] == f"sqlite:///{(study_dir / 'optuna.db').resolve()}"
    assert "(budget cut)" in (study_dir / "study.md").read_text()
    assert f"best trial 0 (val acc {row['val_acc']:.4f}) in {row['run_dir']}" in capsys.readouterr().out


def test_an_interrupted_trial_resumes_in_its_folder(synthetic_root, tmp_path):
    spec = make_spec(synthetic_root, tmp_path / "study", "train.epochs=1", "train.checkpoint_every=2")
    run = spec.study_dir / "trial_0000"

    def interrupt_after_first_state():  # Ctrl-C, as a user would, once the run has saved a state
        deadline = time.monotonic() + 300
        while not list_states(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_after_first_state, daemon=True)
    watcher.start()
    with pytest.raises(Preempted):
        run_study(spec, trials=1, pruner="none")
    watcher.join()
    stopped = int(list_states(run)[0].name.removeprefix("step_"))
    assert stopped < 6  # inside the epoch

    run_study(spec, trials=1, pruner="none")
    first, retry = load_study(spec).get_trials()
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["interrupted"]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == first.params and retry.user_attrs["run_dir"] == str(run)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in line]
    assert steps == sorted(set(steps))  # one history: the retry continued the run, it did not start over


@pytest.mark.parametrize("family", list_models())
def test_default_space_fits_every_family(family):
    # With the family's own front end: bcresnet's sub-bands need 40 mels, which the config checks when it loads.
    overrides = [f"model.name={family}", *[f"features.{k}={v}" for k, v in get_family(family).features.items()]]
    cfg = load_config(CONFIG, overrides)
    space = default_space(cfg)
    dims = parse_space(space, "(default)", CONFIG, overrides)  # every bound and choice builds a valid config
    assert {"train.lr", "train.weight_decay", "augment.mixup_p", "train.epochs"} <= {d.key for d in dims}


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"low": 0.1, "high": 1}}, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "key 'train.lr': low must be below high"),
    ({"train.epochs": {"low": 1.5, "high": 4}}, "key 'train.epochs': is an integer key"),
    ({"train.optimizer": {"low": 0, "high": 1}}, "key 'train.optimizer': is a str key: give it {choices"),
    ({"train.lr": {"low": 0, "high": 0.1, "log": True}}, "key 'train.lr': a log range needs low > 0"),
    ({"train.lr": {"choices": []}}, "key 'train.lr': choices must be a non-empty list"),
    ({"train.lr": {"low": 0.1, "hi": 1}}, "key 'train.lr': unknown field(s) hi"),
    ({"augment.mixup_p": {"low": 0.0, "high": 1.5}}, "augment.mixup_p=1.5 is refused: config key 'augment.mixup_p'"),
    ({"output_dir": {"choices": ["a"]}}, "key 'output_dir': is set by the tuner"),
    (["train.lr"], "must map dotted config keys to ranges or choices"),
])
def test_bad_space_files_are_one_line_errors(space, message, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    rc = tune_cli.main(["--config", CONFIG, "--trials", "1", "--space", str(path), "--dir", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith(f"sctrain.tune: error: search space {path}")
    assert message in err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_missing_optuna_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what an environment without the package imports
    assert tune_cli.main(["--config", CONFIG, "--trials", "1"]) == 2
    assert capsys.readouterr().err.strip() == ('sctrain.tune: error: python -m sctrain.tune needs Optuna: '
                                               'pip install -e ".[tune]"')


@pytest.mark.parametrize("options, message", [
    (["--trials", "0"], "--trials must be >= 1, got 0"),
    (["--trials", "1", "--pruner", "bogus"], "--pruner must be one of median, hyperband, none, got 'bogus'"),
    (["--trials", "1", "--budget-minutes", "0"], "--budget-minutes must be > 0"),
    (["--trials", "1", "--storage", "nosuch://db"], "--storage nosuch://db: "),
])
def test_bad_options_are_one_line_errors(options, message, tmp_path, capsys):
    assert tune_cli.main(["--config", CONFIG, "--dir", str(tmp_path / "s"), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"sctrain.tune: error: {message}")

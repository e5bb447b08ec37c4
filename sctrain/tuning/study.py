"""An Optuna study whose trials are sctrain runs: each trial draws overrides from the search space and trains
``<study_dir>/trial_NNNN`` as ``python -m sctrain`` would (config.yaml, metrics.jsonl, best_sc.pt, state/,
results.json, report), reporting every epoch's validation accuracy to the pruner.

Resuming: the study lives in its Optuna storage (sqlite in the study folder unless ``storage`` names another), so
the same command again continues it up to ``trials`` finished trials. A trial that an earlier command left
unfinished (Ctrl-C, a signal, a killed process) is run again with its parameters in its own folder, where
``train.resume=auto`` continues the run from its last training state.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sctrain.config import ConfigError, load_config
from sctrain.training import rundir
from sctrain.tuning.space import Dimension, override
from sctrain.tuning.summary import write_summary
from sctrain.utils import first_line

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
TRIAL_DIR = "trial_{:04d}"


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError('python -m sctrain.tune needs Optuna: pip install -e ".[tune]"') from None
    return optuna


@dataclass
class StudySpec:
    """What a study searches and where it keeps its trials."""

    name: str
    study_dir: Path
    config: Optional[str]
    overrides: list[str]
    space: list[Dimension]
    raw_space: dict
    storage: Optional[str] = None  # an Optuna storage URL; None = sqlite in study_dir
    budget_minutes: Optional[float] = None
    seed: int = 0
    startup_trials: int = 5

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / 'optuna.db').resolve()}"


def make_pruner(kind: Any, max_epochs: int) -> Any:
    """``median`` (a trial below the median of earlier trials at the same epoch stops, after 3 trials and its
    first epoch), ``hyperband`` (successive halving over epochs), ``none``, or an Optuna pruner object."""
    optuna = require_optuna()
    if not isinstance(kind, str):
        return kind
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {kind!r}")


class EpochMonitor:
    """``Trainer.fit``'s ``on_epoch``: reports each epoch's validation accuracy to the trial and stops the run when
    the pruner says so, or when the next epoch (as long as this trial's mean epoch so far) would end past the
    budget's deadline."""

    def __init__(self, trial: Any, deadline: Optional[float], epochs: int) -> None:
        self.trial, self.deadline, self.epochs = trial, deadline, epochs
        self.last = time.monotonic()
        self.epoch_seconds: list[float] = []
        self.pruned = self.cut_by_budget = False
        self.epochs_run = 0

    def __call__(self, epoch: int, metrics: dict) -> bool:
        now = time.monotonic()
        self.epoch_seconds.append(now - self.last)
        self.last = now
        self.epochs_run += 1
        self.trial.report(float(metrics["val_acc"]), epoch)
        if epoch + 1 >= self.epochs:
            return False  # trained to the end: pruning now would save nothing and skip the run's test
        if self.trial.should_prune():
            self.pruned = True
            return True
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        if self.deadline is not None and now + mean > self.deadline:
            self.cut_by_budget = True
            log.info("trial %d: the next epoch would end past the budget: stopping after epoch %d of %d",
                     self.trial.number, epoch + 1, self.epochs)
            return True
        return False


def run_trial(spec: StudySpec, trial: Any, deadline: Optional[float]) -> float:
    """One trial: a normal sctrain run in its own folder; returns best_sc.pt's validation accuracy."""
    optuna = require_optuna()
    from sctrain.training.distributed import shutdown
    from sctrain.training.trainer import Preempted, Trainer

    run_dir = trial.user_attrs.get("run_dir") or str(spec.study_dir / TRIAL_DIR.format(trial.number))
    trial.set_user_attr("run_dir", run_dir)
    params = {dim.key: dim.suggest(trial) for dim in spec.space}
    tuner = [override("output_dir", run_dir), override("tracking.group", spec.name)]
    cfg = load_config(spec.config, [*spec.overrides, *(override(k, v) for k, v in params.items()), *tuner])
    if cfg.tracking.name is None:
        cfg.tracking.name = f"{spec.name}-{Path(run_dir).name}"
    log.info("trial %d in %s: %s", trial.number, run_dir, ", ".join(override(k, v) for k, v in params.items()))
    monitor = EpochMonitor(trial, deadline, cfg.train.epochs)
    t0 = time.monotonic()
    results = None
    try:
        with Trainer(cfg) as trainer:
            info = trainer.fit(on_epoch=monitor)
            if not monitor.pruned:  # a pruned trial skips the test: its folder holds the run up to the stop
                results = trainer.finish(info)
    except (KeyboardInterrupt, Preempted):
        trial.set_user_attr("interrupted", True)  # the next command runs it again, resuming its folder
        raise
    finally:
        shutdown()
        trial.set_user_attr("wall_s", time.monotonic() - t0)
        trial.set_user_attr("epochs_run", monitor.epochs_run)
    trial.set_user_attr("cut_by_budget", monitor.cut_by_budget)
    if monitor.pruned:
        raise optuna.TrialPruned(f"pruned after epoch {monitor.epochs_run}")
    trial.set_user_attr("test_acc", results["test_acc"])
    return float(results["val_acc"])


def _requeue_interrupted(study: Any, storage: Any) -> None:
    """Run again (same parameters, same folder) each trial an earlier command left unfinished, once."""
    optuna = require_optuna()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            if not _abandoned(t):
                continue  # another process is training it now
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            log.info("trial %d was left running by a process that is gone: marked failed", t.number)
        elif not (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number in retried or "run_dir" not in t.user_attrs:
            continue
        study.enqueue_trial(t.params, user_attrs={"run_dir": t.user_attrs["run_dir"], "retry_of": t.number})
        log.info("trial %d was interrupted: queued again, to resume in %s", t.number, t.user_attrs["run_dir"])


def _abandoned(trial: Any) -> bool:
    """A running trial whose run folder nobody holds (the run folder's lock dies with its process)."""
    run_dir = trial.user_attrs.get("run_dir")
    if run_dir is None:
        return True
    try:
        rundir.claim(run_dir)
    except rundir.RunDirError:
        return False
    rundir.release()
    return True


def finished_count(study: Any) -> int:
    """Trials that count towards ``trials``: completed, pruned, or failed for a reason other than an interruption."""
    states = require_optuna().trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (states.COMPLETE, states.PRUNED)
               or (t.state == states.FAIL and not t.user_attrs.get("interrupted")))


def run_study(spec: StudySpec, trials: int, pruner: Any = "median") -> dict:
    """Run (or continue) the study until it holds ``trials`` finished trials or the budget is spent; returns the
    summary also written to ``study.json`` and ``study.md`` in the study folder."""
    optuna = require_optuna()
    from sctrain.training.trainer import TrainingDiverged

    spec.study_dir.mkdir(parents=True, exist_ok=True)
    try:
        storage = optuna.storages.get_storage(spec.storage_url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy and Optuna raise many kinds for a bad URL
        raise ConfigError(f"--storage {spec.storage_url}: {first_line(e)}") from None
    max_epochs = max([int(d.high) for d in spec.space if d.key == "train.epochs" and d.kind == "int"]
                     + [int(c) for d in spec.space if d.key == "train.epochs" and d.kind == "choices"
                        for c in d.choices]
                     + [load_config(spec.config, spec.overrides).train.epochs])
    study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=spec.seed,
                                                                   n_startup_trials=spec.startup_trials),
                                pruner=make_pruner(pruner, max_epochs))
    for key, value in {"config": spec.config, "overrides": spec.overrides, "space": spec.raw_space}.items():
        study.set_user_attr(key, value)  # the latest command's; the summary shows them
    _requeue_interrupted(study, storage)
    remaining = trials - finished_count(study)
    budget_s = spec.budget_minutes * 60 if spec.budget_minutes else None
    deadline = time.monotonic() + budget_s if budget_s else None
    write_summary(study, spec)
    if remaining <= 0:
        log.info("study %s already holds %d finished trials (asked for %d)", spec.name, finished_count(study), trials)
    else:
        log.info("study %s: %d trial(s) to run%s; storage %s", spec.name, remaining,
                 f" within {spec.budget_minutes:g} minutes" if budget_s else "", spec.storage_url)
        # timeout: Optuna starts no trial once the budget is spent; EpochMonitor cuts the running one's epochs.
        study.optimize(lambda trial: run_trial(spec, trial, deadline), n_trials=remaining, timeout=budget_s,
                       catch=(TrainingDiverged,), callbacks=[lambda s, _: write_summary(s, spec)])
    return write_summary(study, spec)

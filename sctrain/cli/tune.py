"""``python -m sctrain.tune --config FILE --trials N [--budget-minutes M] [--study NAME] [--storage URL]
[--space FILE] [key=value ...]``: an Optuna study whose trials are sctrain runs (docs/tuning.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import yaml

from sctrain.cli.train import setup_logging

EXIT_ERROR = 2


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sctrain.tune", description="Search hyperparameters with Optuna; every trial is an sctrain run "
        "in <dir>/trial_NNNN. The same command again continues the study from its storage.")
    parser.add_argument("--config", help="YAML run config every trial starts from (see configs/)")
    parser.add_argument("--trials", type=int, help="finished trials the study should hold (a rerun runs the rest)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="wall-clock budget of this command: no trial starts after it, and a running trial stops "
                             "after the last epoch that fits")
    parser.add_argument("--study", help="study name (default: the config file's name)")
    parser.add_argument("--dir", help="study folder holding the trials' runs and study.json/.md "
                                      "(default: runs/tune/<study>)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<dir>/optuna.db)")
    parser.add_argument("--space", help="search space YAML (default: the built-in space; see --print-space)")
    parser.add_argument("--print-space", action="store_true", help="print the search space as YAML and exit")
    parser.add_argument("--pruner", default="median", help="median (default), hyperband or none")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument("--startup-trials", type=int, default=5,
                        help="trials drawn at random before TPE models the results")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every trial")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(0)
    from sctrain.artifacts.files import CheckpointError
    from sctrain.config import ConfigError
    from sctrain.data.speechcommands import DatasetError
    from sctrain.training.rundir import RunDirError

    try:
        spec, trials = build_spec(args)
        if args.print_space:
            print(yaml.safe_dump(spec.raw_space, sort_keys=False), end="")
            return 0
        from sctrain.tuning.study import run_study
        summary = run_study(spec, trials, args.pruner)
    except KeyboardInterrupt:
        print("sctrain.tune: interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    except SystemExit as e:
        from sctrain.training.trainer import Preempted
        if isinstance(e, Preempted):  # a signal stopped a trial after saving its state
            print(f"sctrain.tune: stopped in a trial after step {e.step} (state {e.state}); run the same command "
                  "again to continue the study: the trial resumes from that state", file=sys.stderr)
        raise
    except (ConfigError, DatasetError, CheckpointError, RunDirError) as e:
        print(f"sctrain.tune: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    best = summary["best"]
    print(f"sctrain.tune: {len(summary['trials'])} trials in {spec.study_dir / 'study.md'}"
          + (f"; best trial {best['number']} (val acc {best['val_acc']:.4f}) in {best['run_dir']}" if best else ""))
    return 0


def build_spec(args: argparse.Namespace):
    from sctrain.config import ConfigError, load_config
    from sctrain.tuning.space import default_space, parse_space, read_space_file
    from sctrain.tuning.study import PRUNERS, StudySpec, require_optuna

    require_optuna()

    cfg = load_config(args.config, args.overrides)  # the base config's own errors first, one line
    if args.space:
        raw, where = read_space_file(args.space), args.space
    else:
        raw, where = default_space(cfg), "(default)"
    space = parse_space(raw, where, args.config, args.overrides)
    if args.print_space:
        return StudySpec("", Path("."), args.config, list(args.overrides), space, raw), 0
    if args.trials is None or args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    if args.pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {args.pruner!r}")
    if args.startup_trials < 0:
        raise ConfigError(f"--startup-trials must be >= 0, got {args.startup_trials}")
    name = args.study or (Path(args.config).stem if args.config else "sctrain")
    study_dir = Path(args.dir) if args.dir else Path("runs/tune") / name
    spec = StudySpec(name, study_dir, args.config, list(args.overrides), space, raw, storage=args.storage,
                     budget_minutes=args.budget_minutes, seed=args.seed, startup_trials=args.startup_trials)
    return spec, args.trials


if __name__ == "__main__":
    sys.exit(main())

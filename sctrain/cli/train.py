"""``python -m sctrain --config FILE [dotted.key=value ...]`` (also under ``accelerate launch -m sctrain``)."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

EXIT_ERROR = 2
SILENT_RANK_GRACE_S = 5.0

EPILOG = """\
overrides:
  Any config key can be set after the options as dotted.key=value; values are parsed to the key's type.
  Precedence: defaults < --config YAML < overrides.  Examples:
    python -m sctrain --config configs/debug.yaml train.epochs=3 data.root=/data/sc model.kwsnet.width=16
    accelerate launch --config_file launch/cpu2.yaml -m sctrain --config configs/debug.yaml
  Lists: tracking.tags=a,b   Null: tracking.entity=null

config sections (full reference with defaults: python -m sctrain --config-help):
{sections}
"""


def _sections() -> str:
    import dataclasses

    from sctrain.config import Config
    return "\n".join(f"  {f.name:<10} {f.metadata['help']}" for f in dataclasses.fields(Config)
                     if f.name != "output_dir")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sctrain", description="Train a keyword-spotting CNN on Speech Commands.",
        epilog=EPILOG.format(sections=_sections()), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action=_Once, help="YAML run config (see configs/)")
    parser.add_argument("--config-help", action="store_true",
                        help="print every config key with its default and meaning")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-models", action="store_true", help="print the registered model families and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    # Intermixed: options may come after the overrides too (python -m sctrain key=value --print-config).
    return parser.parse_intermixed_args(argv)


class _Once(argparse.Action):
    """An option that may be given once: a second --config would silently replace the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}); "
                         "pass one file and put the other's settings in it or in key=value overrides")
        setattr(namespace, self.dest, values)


def setup_logging(rank: int) -> None:
    # Other ranks only speak up for warnings: one copy of every progress line.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s" if rank == 0
                        else f"%(asctime)s %(levelname).1s [rank {rank}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("torch._dynamo", "torch._inductor", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resume_command(argv: list[str], cfg) -> str:
    """The command line that continues the run: this one, since train.resume=auto picks up output_dir's newest
    state (and a state of output_dir's own wins over train.resume=PATH); only 'never' must go."""
    argv = [a for a in argv if not a.lstrip("-").startswith("train.resume=never")]
    if cfg.train.resume == "never":
        argv.append("train.resume=auto")
    return shlex.join(["python", "-m", "sctrain", *argv])


def refused_message(e: OSError, output_dir: str) -> str:
    """The line for a write refused mid-run; inside ``output_dir`` it is the unwritable-folder error of
    docs/failure_and_recovery.md. The states written before are whole, so the same command resumes."""
    where = Path(e.filename) if e.filename else None
    out = Path(output_dir)
    if where is None or out.resolve() in (where.resolve(), *where.resolve().parents):
        name = f", writing {where.name}" if where is not None else ""
        return (f"cannot write into output_dir {out} ({e.strerror}{name}); pick a writable folder, or make it "
                f"writable again and run the same command to resume")
    return f"cannot write {where} ({e.strerror})"


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from sctrain.config import ConfigError, describe, load_config
    from sctrain.training.distributed import env_rank, env_world_size

    rank = env_rank()
    setup_logging(rank)
    if args.config_help:
        print(describe())
        return 0
    if args.list_models:
        from sctrain.models.registry import describe_models
        print(describe_models())
        return 0
    cfg = None
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from sctrain.training.trainer import train
        results = train(cfg)
    except KeyboardInterrupt:
        print("sctrain: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        from sctrain.training.stopping import EXIT_INTERRUPTED
        from sctrain.training.trainer import Preempted
        if isinstance(e, Preempted) and e.code == EXIT_INTERRUPTED and rank == 0:
            print(f"sctrain: interrupted after step {e.step}; training state saved in {e.state}; resume with: "
                  f"{resume_command(argv, cfg)}", file=sys.stderr)
        raise
    except Exception as e:  # noqa: BLE001 - user-facing errors become one line, the rest a traceback
        from sctrain.artifacts.files import CheckpointError
        from sctrain.data.speechcommands import DatasetError
        from sctrain.training.distributed import OtherRankFailed
        from sctrain.training.rundir import RunDirError
        from sctrain.training.trainer import TrainingDiverged
        from sctrain.utils import is_disk_full, no_space_message, write_refused
        if isinstance(e, OtherRankFailed):
            return EXIT_ERROR
        if isinstance(e, (ConfigError, DatasetError, CheckpointError, RunDirError, TrainingDiverged)):
            # Config errors and divergence are identical on every rank: rank 0 speaks for all.
            if rank == 0 or not isinstance(e, (ConfigError, TrainingDiverged)):
                print(f"sctrain: error: {e}", file=sys.stderr)
            elif env_world_size() > 1:
                # The silent ranks wait a moment: exiting at once can make the launcher stop rank 0 before it
                # has printed, and the user would see no message at all.
                time.sleep(SILENT_RANK_GRACE_S)
            return EXIT_ERROR
        if is_disk_full(e):  # a write other than a checkpoint's (metrics.jsonl, config.yaml, the packed cache)
            where = getattr(e, "filename", None) or (cfg.output_dir if cfg else os.getcwd())
            print(f"sctrain: error: {no_space_message(where)} while writing {where}", file=sys.stderr)
            return EXIT_ERROR
        refused = write_refused(e)
        if refused is not None and cfg is not None:  # output_dir turned read-only (or not ours) mid-run
            print(f"sctrain: error: {refused_message(refused, cfg.output_dir)}", file=sys.stderr)
            return EXIT_ERROR
        raise
    if rank == 0:
        keys = ("val_acc", "test_acc", "latency_ms_p50", "train_clips_per_s", "params")
        summary = "  ".join(f"{k}={results[k]:.4g}" if isinstance(results.get(k), float) else f"{k}={results.get(k)}"
                            for k in keys)
        print(f"sctrain: done. {summary}\nsctrain: outputs in {os.path.abspath(cfg.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

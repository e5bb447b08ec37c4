"""``python -m sctrain.mine RUN``: hard-negative mining rounds on a trained detector.

Each round mines the windows the current best checkpoint fires on in keyword-free training-side audio
(:mod:`sctrain.streameval.mining`), then fine-tunes from that checkpoint with every round's windows so far as
``data.train_negatives`` (an ordinary run in ``<out>/round<N>``: same calibration, test streams and report as
the original run). ``mining.json`` and ``mining.md`` put each round's test figures beside the original's.
Exit status 2, with one line on stderr, for input it cannot use.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

EXIT_ERROR = 2
log = logging.getLogger("sctrain.mine")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.mine", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished run folder (config.yaml and best_sc.pt)")
    p.add_argument("--rounds", type=int, default=1, help="mining rounds (default 1)")
    p.add_argument("--minutes", type=float, default=60.0, help="keyword-free training-side audio searched per round")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs per round (default 5)")
    p.add_argument("--lr-scale", type=float, default=0.3, help="fine-tuning learning rate, times the run's (0.3)")
    p.add_argument("--threshold", type=float,
                   help="mine at this threshold for every keyword (default: the checkpoint's calibrated ones)")
    p.add_argument("--out", help="where the rounds go (default: RUN/mining)")
    args = p.parse_args(argv)
    for flag, low in (("rounds", 1), ("epochs", 1)):
        if getattr(args, flag) < low:
            p.error(f"--{flag} must be >= {low}, got {getattr(args, flag)}")
    if not 0 < args.minutes < 1e5:
        p.error(f"--minutes must be in (0, 100000), got {args.minutes:g}")
    if not 0 < args.lr_scale <= 10:
        p.error(f"--lr-scale must be in (0, 10], got {args.lr_scale:g}")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        p.error(f"--threshold must be in (0, 1], got {args.threshold:g}")
    return args


def _test_figures(results: dict) -> dict:
    test = results.get("kws", {}).get("test", {})
    shown = test.get("calibrated") or test.get("default") or {}
    return {key: shown.get(key) for key in ("miss_rate", "false_alarms", "hours", "fa_per_hour", "fa_per_hour_bound")}


def _markdown(rounds: list[dict]) -> str:
    lines = ["## Hard-negative mining", "",
             "| round | mined (h searched, false alarms) | test miss rate | test FA/h (95 % bound, hours) |",
             "| --- | --- | ---: | ---: |"]
    for r in rounds:
        t, m = r["test"], r.get("mined")
        mined = f"{m['hours']:.2f} h, {m['false_alarms']}" if m else "-"
        miss = f"{100 * t['miss_rate']:.1f} %" if t.get("miss_rate") is not None else "n/a"
        fa = (f"{t['fa_per_hour']:.2f} (<= {t['fa_per_hour_bound']:.2f}, {t['hours']:.2f} h)"
              if t.get("fa_per_hour") is not None else "n/a")
        lines.append(f"| {r['round']} | {mined} | {miss} | {fa} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from sctrain.cli.train import setup_logging

    setup_logging(0)
    from sctrain.artifacts.files import CheckpointError
    from sctrain.config import ConfigError, load_config
    from sctrain.data.pack import load_dataset
    from sctrain.data.speechcommands import DatasetError
    from sctrain.inference.loading import load_model
    from sctrain.streameval.mining import mine
    from sctrain.training.trainer import train
    from sctrain.utils import atomic_write_text, json_text

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "mining"
    try:
        if not (run / "config.yaml").is_file() or not (run / "best_sc.pt").is_file():
            raise ConfigError(f"{run} is not a finished run folder (config.yaml and best_sc.pt)")
        cfg = load_config(run / "config.yaml")
        data = load_dataset(cfg.data)
        first = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
        rounds = [{"round": 0, "checkpoint": str(run / "best_sc.pt"), "test": _test_figures(first)}]
        best, folders = run / "best_sc.pt", list(cfg.data.train_negatives)
        for r in range(1, args.rounds + 1):
            folder = out / f"round{r}" / "mined"
            mined = mine(load_model(best), data, args.minutes, seed=r, out=folder, threshold=args.threshold)
            log.info("round %d: %d false alarms in %.2f h of training-side negatives -> %s", r,
                     mined["false_alarms"], mined["hours"], folder)
            if mined["false_alarms"] == 0:
                log.info("round %d: nothing fired, nothing to fine-tune on; stopping", r)
                rounds.append({"round": r, "mined": mined, "test": rounds[-1]["test"], "checkpoint": str(best)})
                break
            folders.append(str(folder))
            round_cfg = load_config(run / "config.yaml", [
                f"data.train_negatives=[{','.join(folders)}]", f"train.init_from={best}",
                f"train.epochs={args.epochs}", f"train.lr={cfg.train.lr * args.lr_scale}", "train.warmup_epochs=0",
                f"output_dir={out / f'round{r}'}"])
            results = train(round_cfg)
            best = out / f"round{r}" / "best_sc.pt"
            rounds.append({"round": r, "mined": mined, "test": _test_figures(results), "checkpoint": str(best)})
            atomic_write_text(out / "mining.json", json_text({"run": str(run), "rounds": rounds}))
    except (ConfigError, DatasetError, CheckpointError, ValueError, OSError) as e:
        print(f"sctrain: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "mining.json", json_text({"run": str(run), "rounds": rounds}))
    atomic_write_text(out / "mining.md", _markdown(rounds))
    print(_markdown(rounds), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

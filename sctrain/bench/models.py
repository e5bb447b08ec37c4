"""``python -m sctrain.bench models [--root DIR] [--minutes N]``: every registered family side by side.

Per family, at the size and front end of its recipe (``configs/models/<family>.yaml``): trainable
parameters, multiply-accumulates per 1 s clip (counted by ``torch.utils.flop_counter`` over one forward
pass of the network, the front end apart), CPU batch-1 latency p50 on one thread (raw audio in: eager
PyTorch with the family's CPU inference copy, and ONNX Runtime), and training clips/s on this machine
(front end with augmentation + forward + backward + optimizer step, batch 64). With ``--root``, each
family also trains on that dataset for the same wall-clock budget (``--minutes``): the epochs are set from
its measured training speed, so the schedule still warms up and anneals, and the table gives the test
accuracy reached. Writes one markdown table and one JSON (``--out``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sctrain.artifacts.best import save_best
from sctrain.audio.assets import AugmentAssets
from sctrain.audio.constants import CLIP_SAMPLES
from sctrain.audio.features import feature_shape
from sctrain.audio.frontend import FrontEnd
from sctrain.config import Config, ConfigError, load_config
from sctrain.inference.latency import cpu_name, time_calls
from sctrain.inference.loading import load_model
from sctrain.models.registry import count_parameters, create_model, list_models
from sctrain.training.trainer import make_optimizer
from sctrain.utils import first_line

log = logging.getLogger(__name__)
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "models"
TRAIN_BATCH = 64
NUM_CLASSES = 12


def recipe(family: str, overrides: list[str]) -> Config:
    path = RECIPES / f"{family}.yaml"
    return load_config(path if path.is_file() else None, [f"model.name={family}", *overrides])


def count_macs(net: torch.nn.Module, cfg: Config) -> int:
    """Multiply-accumulates of one clip through ``net``: FLOPs of its matmuls/convolutions / 2, as counted."""
    x = torch.randn(1, 1, *feature_shape(cfg.features))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(x)
    return int(counter.get_total_flops() // 2)


def step_rates(cfg: Config, steps: int) -> tuple[float, float]:
    """Clips/s of full training steps on random int16 audio (augmentation, features, fwd, bwd, update),
    and of evaluation (features and forward, no gradients)."""
    torch.manual_seed(0)
    net = create_model(cfg.model, cfg.features, NUM_CLASSES).train()
    assets = AugmentAssets.for_config(cfg.augment, noise=torch.randn(4, 4 * CLIP_SAMPLES) * 0.05)
    frontend = FrontEnd(cfg.features, cfg.augment, assets).train()
    optimizer = make_optimizer(cfg, net.parameters())
    audio = (torch.randn(TRAIN_BATCH, CLIP_SAMPLES) * 3000).to(torch.int16)
    target = torch.randint(0, NUM_CLASSES, (TRAIN_BATCH,))

    def step():
        loss = F.cross_entropy(net(frontend(audio)), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_ms = float(np.median(time_calls(step, torch.device("cpu"), steps, warmup=2)))
    net.eval()
    frontend.eval()
    with torch.no_grad():
        eval_ms = float(np.median(time_calls(lambda: net(frontend(audio)), torch.device("cpu"), steps, warmup=1)))
    return TRAIN_BATCH * 1e3 / train_ms, TRAIN_BATCH * 1e3 / eval_ms


def latency(cfg: Config, workdir: Path, iters: int, onnx: bool) -> dict:
    """Batch-1 p50 ms on one thread: the CPU inference copy (what predict and streaming run) and ONNX Runtime."""
    torch.manual_seed(0)
    net = create_model(cfg.model, cfg.features, NUM_CLASSES).eval()
    labels = [f"word{i}" for i in range(NUM_CLASSES)]
    save_best(workdir / "best_sc.pt", net, labels, cfg.to_dict(), {"epoch": 0})
    model = load_model(workdir / "best_sc.pt")
    one = torch.randn(1, CLIP_SAMPLES) * 0.1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            eager = float(np.median(time_calls(lambda: model.cpu_classifier(one), torch.device("cpu"), iters)))
        row = {"eager_ms": eager, "cpu_copy": type(model.cpu_net).description, "onnx_ms": None}
        if onnx:
            from sctrain.inference.export import ExportError, OnnxModel, export_onnx
            try:
                session = OnnxModel(export_onnx(model, workdir / "m.onnx"), threads=1)
                x = one.numpy()
                row["onnx_ms"] = float(np.median(time_calls(lambda: session(x), torch.device("cpu"), iters)))
            except (ExportError, RuntimeError) as e:
                log.warning("%s: ONNX Runtime skipped (%s)", cfg.model.name, first_line(e))
    finally:
        torch.set_num_threads(threads)
    return row


def accuracy_in_budget(family: str, overrides: list[str], root: str, minutes: float, rates: tuple[float, float],
                       workdir: Path) -> dict:
    """Train for about ``minutes`` (epochs from the measured rate) and return the test accuracy."""
    from sctrain.data.pack import load_dataset
    from sctrain.training.trainer import train

    cfg = recipe(family, [*overrides, f"data.root={root}", f"output_dir={workdir / 'run'}",
                                  "latency.enabled=false", "tracking.report=false", "tracking.mode=disabled",
                                  "tracking.log_examples=0", "train.resume=never"])
    data = load_dataset(cfg.data, progress=False)
    train_clips, eval_clips = len(data.split("train")), len(data.split("validation"))
    # An epoch costs its training steps, a validation pass and about a second of loader start and state
    # saving; 10 % of the budget is left for the final test and what the estimate misses.
    train_rate, eval_rate = rates
    epoch_s = train_clips / train_rate + eval_clips / eval_rate + 1.0
    epochs = max(1, math.floor(0.9 * minutes * 60 / epoch_s))
    cfg.train.epochs = epochs
    cfg.train.warmup_epochs = min(cfg.train.warmup_epochs, max(0.5, epochs / 10))
    start = time.perf_counter()
    results = train(cfg)
    return {"epochs": epochs, "train_clips": train_clips, "minutes": (time.perf_counter() - start) / 60,
            "test_acc": results["test_acc"], "val_acc": results["val_acc"]}


def run(args: argparse.Namespace) -> dict:
    families = args.families or list_models()
    report = {"date": datetime.date.today().isoformat(), "machine": cpu_name(), "cores": os.cpu_count(),
              "torch": torch.__version__, "python": platform.python_version(), "root": args.root,
              "minutes": args.minutes if args.root else None, "families": {}}
    with tempfile.TemporaryDirectory(prefix="sctrain-bench-models-") as tmp:
        for family in families:
            cfg = recipe(family, args.overrides)
            workdir = Path(tmp) / family
            workdir.mkdir()
            net = create_model(cfg.model, cfg.features, NUM_CLASSES)
            section = getattr(cfg.model, family)
            row = {"size": {k: getattr(section, k) for k in section.__dataclass_fields__ if k != "dropout"},
                   "features": list(feature_shape(cfg.features)) + [("mfcc" if cfg.features.n_mfcc else "log-mel")],
                   "params": count_parameters(net), "macs": count_macs(net, cfg)}
            row.update(latency(cfg, workdir, args.iters, not args.no_onnx))
            row["train_clips_per_s"], row["eval_clips_per_s"] = step_rates(cfg, args.train_steps)
            if args.root:
                rates = row["train_clips_per_s"], row["eval_clips_per_s"]
                row.update(accuracy_in_budget(family, args.overrides, args.root, args.minutes, rates, workdir))
            report["families"][family] = row
            print(f"{family}: {json.dumps(row)}", flush=True)
    return report


def table(report: dict) -> str:
    rows = ["| family | size | features | params | MACs/clip | CPU p50 eager (copy) | ONNX RT p50 | train clips/s |"
            + (" epochs | test acc |" if report["root"] else ""),
            "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |" + (" ---: | ---: |" if report["root"] else "")]
    for name, r in report["families"].items():
        size = ", ".join(f"{k}={v}" for k, v in r["size"].items())
        onnx = f"{r['onnx_ms']:.2f} ms" if r["onnx_ms"] is not None else "n/a"
        line = (f"| {name} | {size} | {r['features'][0]}x{r['features'][1]} {r['features'][2]} | {r['params']:,} | "
                f"{r['macs'] / 1e6:.1f} M | {r['eager_ms']:.2f} ms ({r['cpu_copy']}) | {onnx} | "
                f"{r['train_clips_per_s']:.0f} |")
        if report["root"]:
            line += f" {r['epochs']} | {r['test_acc']:.4f} |"
        rows.append(line)
    head = (f"{report['machine']}, {report['cores']} cores, torch {report['torch']}, {report['date']}"
            + (f"; accuracy: {report['minutes']} min of training each on {report['root']}" if report["root"] else ""))
    return head + "\n\n" + "\n".join(rows)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench models", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="dataset root: also train each family for --minutes and report test accuracy")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget per family (default 5)")
    p.add_argument("--families", type=lambda s: [x for x in s.split(",") if x], help="comma-separated subset")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="key=value",
                   help="config overrides for every family, e.g. data.num_workers=0")
    p.add_argument("--iters", type=int, default=100, help="timed batch-1 calls per latency figure (default 100)")
    p.add_argument("--train-steps", type=int, default=8, help="timed training steps per family (default 8)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    p.add_argument("--out", default="bench_models", help="writes OUT.json and OUT.md (default bench_models)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.iters < 1 or args.train_steps < 1:
        p.error("--minutes must be > 0, --iters and --train-steps >= 1")
    unknown = sorted(set(args.families or []) - set(list_models()))
    if unknown:
        p.error(f"unknown families {', '.join(unknown)}: registered are {', '.join(list_models())}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    try:
        report = run(args)
    except ConfigError as e:
        print(f"sctrain: error: {e}", file=sys.stderr)
        return 2
    text = table(report)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2))
    Path(f"{args.out}.md").write_text(text + "\n")
    print(text)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.bench scaling``: the same short training launched with 1 and 2 (or more) processes.

Each point is a real launch of the training CLI (``python -m sctrain`` for one process, ``accelerate launch``
with ``launch/cpu2.yaml`` or ``launch/gpu8.yaml`` and ``--num_processes N`` for more), so it measures what a
user gets: the sharded sampler, DDP's gradient all-reduce, the per-step stop check. Throughput is the
training loop's own clips/s over a window of ``--steps`` steps after ``--warmup`` steps (the loop logs at
both ends of the window, and the window must fit in one epoch, so no evaluation or loader restart falls
inside it). Scaling efficiency = clips/s with N processes / (N x clips/s with 1). Prints one JSON line and
writes it to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked; the message is one line."""


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="dataset root (default: a synthetic dataset generated in a temporary folder)")
    p.add_argument("--config", default=str(REPO / "configs/default.yaml"), help="run config (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per point (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the window (default: %(default)s)")
    p.add_argument("--processes", default=None,
                   help="comma-separated process counts (default: 1,2 on the CPU; 1,2,4,8 up to the GPU count)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="clips per step per process (default: 32 on the CPU, the config's on a GPU)")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers per process (default: the config's)")
    p.add_argument("--out", "--json", dest="out", default="runs/bench/scaling.json",
                   help="JSON file to write (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per launch (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for every launch")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1")
    return args


def process_counts(text: Optional[str], gpus: int) -> list[int]:
    if text:
        try:
            counts = sorted({int(v) for v in text.split(",") if v.strip()})
        except ValueError:
            raise BenchError(f"--processes must be comma-separated integers, got {text!r}") from None
        if not counts or counts[0] < 1:
            raise BenchError(f"--processes must be >= 1, got {text!r}")
        if gpus and counts[-1] > gpus:
            raise BenchError(f"--processes {counts[-1]} needs {counts[-1]} GPUs; this machine has {gpus}")
        return counts if 1 in counts else [1, *counts]
    return [n for n in (1, 2, 4, 8) if n <= gpus] if gpus else [1, 2]


def launch_command(processes: int, gpus: int, port: int) -> list[str]:
    """The user-facing launch for ``processes`` processes on this machine."""
    if processes == 1:
        return [sys.executable, "-m", "sctrain"]
    config = REPO / "launch" / ("gpu8.yaml" if gpus else "cpu2.yaml")
    if not config.is_file():
        raise BenchError(f"launch config not found: {config} (run from a source checkout)")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(processes), "--main_process_port", str(port), "-m", "sctrain"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_data(root: Optional[str], needed: int, scratch: Path) -> Path:
    """``root``, or a synthetic dataset with at least ``needed`` training clips."""
    if root:
        return Path(root)
    from sctrain.data.synthetic import write_synthetic_dataset
    words = 8
    per_word = math.ceil(needed / (0.8 * words) * 1.1) + 1  # ~80 % of speakers land in the training split
    return write_synthetic_dataset(scratch / "synthetic_sc", words=words, per_word=per_word, seed=0, noise_files=2)


def window_rate(metrics: Path, warmup: int, steps: int) -> float:
    """clips/s over the steps (warmup, warmup + steps], from the loop's own train records (one epoch)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    logged = [r["step"] for r in train]
    if warmup not in logged or warmup + steps not in logged:
        raise BenchError(f"{metrics} lacks the train records at steps {warmup} and {warmup + steps}")
    window = [r for r in train if warmup <= r["step"] <= warmup + steps]
    if len({r["epoch"] for r in window}) > 1:
        raise BenchError("the timed window crosses an epoch boundary: use a bigger --root or fewer --steps")
    # Each record's rate covers the steps since the previous log; every step has the same global batch, so
    # the window's rate is steps / sum(interval steps / interval rate).
    seconds_per_clip = sum((b["step"] - a["step"]) / b["clips_per_s"] for a, b in zip(window, window[1:]))
    return steps / seconds_per_clip


def run_point(processes: int, gpus: int, base: list[str], out_dir: Path, warmup: int, steps: int,
              timeout: float) -> dict:
    cmd = [*launch_command(processes, gpus, free_port()), *base, f"output_dir={out_dir}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{processes}-process launch did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise BenchError(f"{processes}-process launch failed (exit {proc.returncode}): {tail[:400]}")
    rate = window_rate(out_dir / "metrics.jsonl", warmup, steps)
    return {"processes": processes, "clips_per_s": round(rate, 1),
            "clips_per_s_per_process": round(rate / processes, 1),
            "launch_wall_s": round(time.perf_counter() - start, 1)}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchError as e:
        print(f"scaling: error: {e}", file=sys.stderr)
        return 2
    line = json.dumps(result)
    print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    return 0


def run(args: argparse.Namespace) -> dict:
    import torch

    from sctrain.config import ConfigError, load_config
    from sctrain.training.distributed import cpu_cores

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    counts = process_counts(args.processes, gpus)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    batch = args.batch_size or (cfg.train.batch_size if gpus else 32)
    total_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="sctrain-scaling-") as tmp:
        scratch = Path(tmp)
        root = ensure_data(args.root, counts[-1] * batch * total_steps, scratch)
        # Logs every gcd(warmup, steps) steps, so there is a log at both ends of the window.
        base = ["--config", args.config, *args.overrides, f"data.root={root}", f"train.batch_size={batch}",
                f"train.max_steps={total_steps}", f"train.log_every={math.gcd(args.warmup, args.steps)}",
                "train.epochs=1000",
                "train.resume=never", "train.checkpoint_every=0", "latency.enabled=false", "tracking.wandb=false",
                "tracking.report=false"]
        if args.workers is not None:
            base.append(f"data.num_workers={args.workers}")
        points = [run_point(n, gpus, base, scratch / f"p{n}", args.warmup, args.steps, args.timeout) for n in counts]
    one = points[0]["clips_per_s"]
    device = torch.cuda.get_device_name(0) if gpus else f"cpu ({platform.processor() or platform.machine()})"
    result = {"benchmark": "scaling", "device": device, "gpus": gpus, "cpu_cores": cpu_cores(),
              "config": str(args.config), "batch_per_process": batch, "steps": args.steps, "warmup": args.warmup,
              "points": points,
              "efficiency": {str(p["processes"]): round(p["clips_per_s"] / (p["processes"] * one), 3) for p in points}}
    if gpus:
        result["per_gpu_clips_per_s"] = {str(p["processes"]): p["clips_per_s_per_process"] for p in points}
    return result


if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.bench gpu``: the one prepared GPU check, self-contained, inside a time budget.

Sections, in this order; once ``--budget-s`` is spent, the rest are recorded as skipped, with the reason:

1. ``throughput``: training clips/s of the trainer's own epoch loop (``Trainer.train_epoch``: batches,
   augmentation, features, forward, backward, update, the stop vote, a log line every ``train.log_every``
   steps) for ``kwsnet`` over {loader, device} placement x {eager, compiled} x {bf16, fp32} x batch sizes.
   The first epoch of each case is its warm-up (compilation, autotuning, worker start); the rate is over
   the whole epochs after it, at least ``--min-seconds``.
2. ``tta``: time to ``--tta-target`` validation accuracy on the generated words (``train.stop_at_val_acc``),
   kwsnet, device placement, compiled, bf16: the wall time of ``Trainer.fit``, evaluations included.
3. ``ddp``: a real launch through ``accelerate launch``: on a GPU one process with ``launch/gpu8.yaml``
   (DDP over NCCL), on a CPU ``--ddp-processes`` processes with ``launch/cpu2.yaml`` (gloo).
4. ``tests``: the ``gpu``-marked tests (``pytest -m gpu``).
5. ``zoo``: every other registered family, batch 256, compiled, bf16, both placements.

The figures go to ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``, rewritten after every case, so a
run cut short still leaves what it measured. ``--device cpu`` runs the same code in a small form (CI
runs it, so the script cannot rot); ``bench/gpu_check.sh`` is how the GPU machine runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("throughput", "tta", "ddp", "tests", "zoo")
# Where each section must end, as a share of --budget-s (a section that ends early leaves its time to the next):
# the throughput matrix would otherwise take it all (each compiled case costs a compile).
SECTION_ENDS = {"throughput": 0.55, "tta": 0.65, "ddp": 0.72, "tests": 0.92, "zoo": 1.0}
V2_TRAIN_CLIPS = 84_843  # Speech Commands v0.02's training split (validation_list / testing_list excluded)
# The GPU targets for kwsnet width 32, bf16, compiled, device placement, batch 256.
TARGET_CLIPS_PER_S, TARGET_DEVICE_OVER_LOADER, TARGET_V2_EPOCH_S = 50_000, 1.5, 2.0
COMMON = ["train.epochs=1000", "train.checkpoint_every=0", "train.warmup_epochs=0", "latency.enabled=false",
          "tracking.mode=disabled", "tracking.report=false", "tracking.log_examples=0", "kws.calibrate=false",
          "kws.test_minutes=0"]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="cuda, cpu, or auto (cuda when there is one); the CPU defaults are CI-sized")
    p.add_argument("--out", default="runs/bench/gpu", help="folder for gpu_check.json/.md and the logs")
    p.add_argument("--root", help="SpeechCommands-layout dataset (default: generated into the work folder)")
    p.add_argument("--workdir", help="folder for the generated data and the run folders (default: --out)")
    p.add_argument("--words", type=int, help="generated words (default 35 on a GPU, 6 on a CPU)")
    p.add_argument("--per-word", type=int, help="generated clips per word (default 400 on a GPU, 20 on a CPU)")
    p.add_argument("--sections", help=f"comma-separated, of {','.join(SECTIONS)} (default: all on a GPU, "
                                      "throughput,tta,ddp on a CPU)")
    p.add_argument("--widths", default=None, help="kwsnet widths (default 32 on a GPU, 8 on a CPU)")
    p.add_argument("--batches", default=None, help="per-step batch sizes (default 256,1024 on a GPU, 16 on a CPU)")
    p.add_argument("--placements", default="device,loader", help="data.placement values (default: %(default)s)")
    p.add_argument("--compile", dest="compile_modes", default=None,
                   help="compiled,eager (default on a GPU) or a subset (default eager on a CPU: ~40 s a compile)")
    p.add_argument("--precisions", default=None, help="bf16,fp32 (default on a GPU; fp32 on a CPU)")
    p.add_argument("--layouts", default=None,
                   help="default,channels-last: every case in both memory formats (default: the first case only "
                        "is measured channels-last too)")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure each case this often, cases interleaved, and report the median (default 1)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="timed seconds per case at least, in whole epochs (default 2 on a GPU, 0 on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="loader placement: data.num_workers (default: the "
                                                             "config's, 2)")
    p.add_argument("--tta-target", type=float, default=None, help="validation accuracy to reach (default 0.95 on a "
                                                                  "GPU, 0.3 on a CPU)")
    p.add_argument("--tta-epochs", type=int, default=None, help="epochs at most (default 40 on a GPU, 3 on a CPU)")
    p.add_argument("--ddp-processes", type=int, default=None, help="processes of the ddp section (default 1 on a "
                                                                   "GPU: NCCL; 2 on a CPU: gloo)")
    p.add_argument("--budget-s", type=float, default=450, help="seconds for the whole check (default: %(default)s)")
    p.add_argument("--config", default=str(REPO / "configs/default.yaml"), help="base run config")
    args = p.parse_args(argv)
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here")
    args.device = "cuda" if gpu else "cpu"
    defaults = {"words": (35, 6), "per_word": (400, 20), "sections": (",".join(SECTIONS), "throughput,tta,ddp"),
                "widths": ("32", "8"), "batches": ("256,1024", "16"), "compile_modes": ("compiled,eager", "eager"),
                "precisions": ("bf16,fp32", "fp32"), "min_seconds": (2.0, 0.0), "tta_target": (0.95, 0.3),
                "tta_epochs": (40, 3), "ddp_processes": (1, 2)}
    for name, (on_gpu, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    args.sections = _choices(p, "--sections", args.sections, SECTIONS)
    args.placements = _choices(p, "--placements", args.placements, ("device", "loader"))
    args.compile_modes = _choices(p, "--compile", args.compile_modes, ("compiled", "eager"))
    args.precisions = _choices(p, "--precisions", args.precisions, ("bf16", "fp32"))
    args.layouts = None if args.layouts is None else _choices(p, "--layouts", args.layouts,
                                                               ("default", "channels-last"))
    args.widths, args.batches = _ints(p, "--widths", args.widths), _ints(p, "--batches", args.batches)
    if args.repeats < 1 or args.per_word < 1 or not 1 <= args.words <= 35 or args.ddp_processes < 1:
        p.error("--repeats, --per-word and --ddp-processes must be >= 1, --words in 1..35")
    return args


def _choices(p: argparse.ArgumentParser, flag: str, text: str, allowed: tuple) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        p.error(f"{flag}: {','.join(bad) or 'nothing'} is not one of {','.join(allowed)}")
    return values


def _ints(p: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        p.error(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


class Budget:
    """Seconds of ``--budget-s`` used; a section, or a case inside one, starts only before its end."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()
        self.end = seconds  # the current section's end

    @property
    def used(self) -> float:
        return time.perf_counter() - self.t0

    def enter(self, section: str) -> float:
        """Start ``section``: returns its seconds left (at least 30, for the subprocess timeouts)."""
        self.end = self.seconds * SECTION_ENDS[section]
        return max(30.0, self.end - self.used)

    def spent(self) -> bool:
        return self.used >= self.end


class Report:
    """The check's figures; ``save`` rewrites the JSON and the markdown table (after every case)."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out = out
        self.data = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(args.device),
                     "args": {k: v for k, v in vars(args).items()}, "throughput": [], "zoo": [], "sections": {}}

    def save(self) -> None:
        self.data["targets"] = targets(self.data["throughput"])
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def machine(device: str) -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    try:
        import accelerate
        info["accelerate"] = accelerate.__version__
    except ImportError:
        info["accelerate"] = None
    return info


# ------------------------------------------------------------------------------------------------ data
def dataset(args: argparse.Namespace, out: Path, log: Callable[[str], None]) -> Path:
    if args.root:
        return Path(args.root)
    from sctrain.data.synthetic import write_synthetic_dataset
    root = out / f"data-{args.words}w-{args.per_word}"
    if not (root / "README.md").is_file():
        t0 = time.perf_counter()
        write_synthetic_dataset(root, words=args.words, per_word=args.per_word, seed=0, overwrite=True)
        log(f"generated {args.words} words x {args.per_word} clips in {time.perf_counter() - t0:.1f} s: {root}")
    return root


# ------------------------------------------------------------------------------------------------ cases
def case_overrides(args, root: Path, out: Path, family: str, width: Optional[int], batch: int, placement: str,
                   compiled: bool, precision: str, channels_last: bool = False) -> list[str]:
    overrides = [*COMMON, f"data.root={root}", f"output_dir={out}", f"model.name={family}",
                 f"train.batch_size={batch}", f"data.placement={placement}", f"train.compile={str(compiled).lower()}",
                 f"train.precision={'no' if precision == 'fp32' else precision}",
                 f"train.channels_last={str(channels_last).lower()}"]
    if width is not None:
        overrides.append(f"model.kwsnet.width={width}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    return overrides


def fresh_process_state() -> None:
    """Let the next Trainer build its own Accelerator (its state is a per-process singleton) and free the
    previous case's device memory and compiled graphs."""
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def bench_trainer(cfg):
    """A Trainer built in a fresh process state (its own Accelerator, no earlier graphs or device memory),
    closed and its run folder released afterwards."""
    from sctrain.training.trainer import Trainer

    fresh_process_state()
    try:
        with Trainer(cfg) as trainer:
            yield trainer
    finally:
        fresh_process_state()


def measure(cfg, min_seconds: float) -> dict:
    """Warm-up epoch, then whole epochs for at least ``min_seconds`` (at least one): clips/s of the loop."""
    t_build = time.perf_counter()
    with bench_trainer(cfg) as trainer:
        build_s = time.perf_counter() - t_build
        p = trainer.progress
        t0 = time.perf_counter()
        trainer.train_epoch(0)
        sync(trainer.device)
        warmup_s = time.perf_counter() - t0
        epochs, clips, t0 = 0, 0, time.perf_counter()
        while epochs == 0 or time.perf_counter() - t0 < min_seconds:
            epochs += 1
            p.epoch, p.step_in_epoch = epochs, 0
            trainer.train_epoch(epochs)
            clips += trainer.steps_per_epoch * cfg.train.batch_size * trainer.world
        sync(trainer.device)
        seconds = time.perf_counter() - t0
        row = {"clips_per_s": round(clips / seconds, 1), "timed_s": round(seconds, 3), "epochs": epochs,
               "steps_per_epoch": trainer.steps_per_epoch, "warmup_s": round(warmup_s, 2),
               "setup_s": round(build_s, 2), "placement": trainer.placement.kind,
               "mixed_precision": trainer.accelerator.mixed_precision}
        if trainer.device.type == "cuda":
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(trainer.device) / 2 ** 30, 2)
        return row


def throughput_cases(args, families: list[str]) -> list[dict]:
    """Cases in the order they are measured: the target's pair (device and loader, compiled bf16 at the first
    batch size) first, so a budget cut loses the least telling figures."""
    cases = []
    for family in families:
        widths = args.widths if family == "kwsnet" else [None]
        for width in widths:
            for batch in args.batches:
                for precision in args.precisions:
                    for compile_mode in args.compile_modes:
                        for placement in args.placements:
                            for layout in args.layouts or ["default"]:
                                cases.append({"family": family, "width": width, "batch": batch,
                                              "precision": precision, "compile": compile_mode, "placement": placement,
                                              "channels_last": layout == "channels-last"})
    # Compiled fp32 last: each costs a compile and matters least (bf16 is the GPU default). Stable sort.
    cases.sort(key=lambda c: c["compile"] == "compiled" and c["precision"] == "fp32")
    if "kwsnet" in families and args.layouts is None:  # channels-last, measured (not assumed) on the first case
        cases.insert(min(2, len(cases)), {**cases[0], "channels_last": True})
    return cases


def run_cases(args, report: Report, key: str, cases: list[dict], root: Path, out: Path, budget: Budget,
              log: Callable[[str], None]) -> None:
    from sctrain.config import load_config

    rows = report.data[key]
    runs: dict[int, list[dict]] = {}
    for repeat in range(args.repeats):
        for i, case in enumerate(cases):
            if budget.spent():
                report.data["sections"][key] = f"cut by the budget after {budget.used:.0f} s"
                log(f"{key}: budget spent, {len(cases) * args.repeats - len(runs.get(i, []))} runs left out")
                report.save()
                return
            case_dir = out / "runs" / f"{key}-{i}-r{repeat}"
            cfg = load_config(args.config, case_overrides(args, root, case_dir, case["family"], case["width"],
                                                          case["batch"], case["placement"],
                                                          case["compile"] == "compiled", case["precision"],
                                                          case.get("channels_last", False)))
            try:
                result = measure(cfg, args.min_seconds)
            except Exception as e:  # noqa: BLE001 - one failed case must not cost the other figures
                result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
            runs.setdefault(i, []).append(result)
            row = {**case, **summarise(runs[i])}
            if i < len(rows):
                rows[i] = row
            else:
                rows.append(row)
            log(f"{key} {describe(case)}: " + (f"{row['clips_per_s']:,.0f} clips/s" if "clips_per_s" in row
                                               else row.get("error", "?")))
            report.save()
    report.data["sections"][key] = "done"
    report.save()


def summarise(results: list[dict]) -> dict:
    """The median run's figures (by clips/s), with every run's rate; the first error if none succeeded."""
    good = [r for r in results if "clips_per_s" in r]
    if not good:
        return {"error": results[0].get("error")}
    rates = [r["clips_per_s"] for r in good]
    median = statistics.median(rates)
    nearest = min(good, key=lambda r: abs(r["clips_per_s"] - median))
    return {**nearest, "clips_per_s": round(median, 1), "runs_clips_per_s": rates}


def describe(case: dict) -> str:
    name = case["family"] + (f"-{case['width']}" if case.get("width") else "")
    layout = " channels-last" if case.get("channels_last") else ""
    return f"{name} batch {case['batch']} {case['precision']} {case['compile']} {case['placement']}{layout}"


# ------------------------------------------------------------------------------------------------ tta
def time_to_accuracy(args, root: Path, out: Path) -> dict:
    from sctrain.config import load_config

    precision = "bf16" if args.device == "cuda" else "fp32"
    compiled = args.device == "cuda"
    overrides = case_overrides(args, root, out / "runs" / "tta", "kwsnet", args.widths[0], args.batches[0],
                               "device", compiled, precision)
    overrides = [o for o in overrides if not o.startswith(("train.epochs=", "train.warmup_epochs="))]
    overrides += [f"train.epochs={args.tta_epochs}", f"train.stop_at_val_acc={args.tta_target}",
                  "train.warmup_epochs=1"]
    cfg = load_config(args.config, overrides)
    with bench_trainer(cfg) as trainer:
        info = trainer.fit()
        p = trainer.progress
        return {"target_val_acc": args.tta_target, "reached": bool(info["stopped_at_val_acc"]),
                "best_val_acc": round(p.best_val_acc, 4), "epochs": p.epoch, "steps": p.global_step,
                "fit_seconds": round(info["fit_seconds"], 2), "clips_per_s": info["train_clips_per_s"],
                "setup": describe({"family": "kwsnet", "width": args.widths[0], "batch": args.batches[0],
                                   "precision": precision, "compile": "compiled" if compiled else "eager",
                                   "placement": "device"}),
                "train_clips": len(trainer.data.split("train")), "words": len(trainer.labels)}


# ------------------------------------------------------------------------------------------------ ddp, tests
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    """This environment with the checkout first on PYTHONPATH, so child processes import this sctrain
    (the GPU machine runs it from the checkout, not installed)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def ddp_launch(args, root: Path, work: Path, out: Path, timeout: float) -> dict:
    """``accelerate launch`` of the training CLI, as a user starts it; reads its results.json back."""
    gpu = args.device == "cuda"
    run_dir = work / "runs" / "ddp"
    launch = REPO / "launch" / ("gpu8.yaml" if gpu else "cpu2.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch), "--num_processes",
           str(args.ddp_processes), "--main_process_port", str(free_port()), "-m", "sctrain",
           "--config", str(REPO / "configs/debug.yaml"), f"data.root={root}", f"output_dir={run_dir}",
           "train.epochs=2", "train.resume=never", f"model.kwsnet.width={args.widths[0]}", "tracking.report=false",
           "latency.enabled=false", f"train.batch_size={args.batches[0]}", f"data.placement={args.placements[0]}"]
    env = child_env()
    if not gpu:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    (out / "ddp.log").write_text(proc.stdout + proc.stderr)
    row = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
    results = run_dir / "results.json"
    if proc.returncode == 0 and results.is_file():
        saved = json.loads(results.read_text())
        row.update({k: saved.get(k) for k in ("world_size", "distributed", "device", "precision", "val_acc",
                                               "test_acc", "train_clips_per_s", "placement")})
    else:
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return row


def gpu_tests(out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", str(REPO / "tests")]
    env = child_env()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    return {"exit_code": proc.returncode, "summary": lines[-1].strip("= ") if lines else None,
            "wall_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------------ summary
def targets(rows: list[dict]) -> dict:
    """The issue's GPU targets, read off the throughput rows (None where a row is missing)."""
    def rate(placement: str) -> Optional[float]:
        for r in rows:
            if (r.get("family"), r.get("width"), r.get("batch"), r.get("precision"), r.get("compile"),
                    r.get("placement"), r.get("channels_last", False)) == ("kwsnet", 32, 256, "bf16", "compiled",
                                                                             placement, False):
                return r.get("clips_per_s")
        return None

    device, loader = rate("device"), rate("loader")
    return {"kwsnet32_bf16_compiled_device_256_clips_per_s": device,
            "device_over_loader": round(device / loader, 2) if device and loader else None,
            "v2_epoch_s_derived": round(V2_TRAIN_CLIPS / device, 2) if device else None,
            "met": None if device is None or loader is None else
            device >= TARGET_CLIPS_PER_S and device / loader >= TARGET_DEVICE_OVER_LOADER
            and V2_TRAIN_CLIPS / device < TARGET_V2_EPOCH_S}


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [f"# GPU check, {data['date']}", "",
             f"Machine: {m.get('gpu', m['cpu'])} ({m['device']}), {m['cpu_count']} CPU cores, torch {m['torch']}, "
             f"Python {m['python']}, accelerate {m.get('accelerate')}.", ""]
    for key, title in (("throughput", "Training throughput (Trainer.train_epoch, after a warm-up epoch)"),
                       ("zoo", "Other families (batch 256)")):
        rows = data[key]
        if not rows:
            continue
        lines += [f"## {title}", "", "| model | batch | precision | compile | placement | layout | clips/s | runs | "
                  "warm-up s | peak GPU GB |", "| --- | ---: | --- | --- | --- | --- | ---: | --- | ---: | ---: |"]
        for r in rows:
            name = r["family"] + (f"-{r['width']}" if r.get("width") else "")
            head = (f"| {name} | {r['batch']} | {r['precision']} | {r['compile']} | {r['placement']} | "
                    f"{'channels-last' if r.get('channels_last') else 'default'} |")
            if "clips_per_s" not in r:
                lines.append(f"{head} failed: {r.get('error')} | | | |")
                continue
            runs = ", ".join(f"{v:,.0f}" for v in r.get("runs_clips_per_s", []))
            lines.append(f"{head} {r['clips_per_s']:,.0f} | {runs} | {r['warmup_s']} | {r.get('peak_gpu_gb', '')} |")
        lines.append("")
    t = data.get("targets", {})
    if t.get("kwsnet32_bf16_compiled_device_256_clips_per_s"):
        lines += ["## Targets (kwsnet width 32, bf16, compiled, batch 256)", "",
                  f"- device placement: {t['kwsnet32_bf16_compiled_device_256_clips_per_s']:,.0f} clips/s "
                  f"(target >= {TARGET_CLIPS_PER_S:,})",
                  f"- device / loader: {t['device_over_loader']} (target >= {TARGET_DEVICE_OVER_LOADER})",
                  f"- a v2-sized epoch ({V2_TRAIN_CLIPS:,} clips) at that rate: {t['v2_epoch_s_derived']} s "
                  f"(target < {TARGET_V2_EPOCH_S:g} s; derived from the rate, not timed)",
                  f"- all met: {t['met']}", ""]
    for key, title in (("tta", "Time to accuracy"), ("ddp", "DDP launch"), ("tests", "gpu-marked tests")):
        if key in data:
            lines += [f"## {title}", "", "```", json.dumps(data[key], indent=1, default=str), "```", ""]
    lines += ["## Sections", ""] + [f"- {k}: {v}" for k, v in data["sections"].items()] + [""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    import logging

    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir).resolve() if args.workdir else out
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budget = Budget(args.budget_s)

    def log(text: str) -> None:
        print(f"[bench gpu {budget.used:6.1f} s] {text}", flush=True)

    report = Report(out, args)
    report.save()
    root = dataset(args, work, log)
    report.data["dataset"] = str(root)
    from sctrain.models.registry import list_models
    others = [f for f in list_models() if f != "kwsnet"]
    for section in args.sections:
        left = budget.enter(section)
        if budget.spent():
            report.data["sections"][section] = (f"skipped: its share of the {args.budget_s:.0f} s budget was spent "
                                                 f"(section end {budget.end:.0f} s)")
            report.save()
            continue
        log(f"section {section} ({left:.0f} s of the budget until {budget.end:.0f} s)")
        try:
            if section == "throughput":
                run_cases(args, report, "throughput", throughput_cases(args, ["kwsnet"]), root, work, budget, log)
            elif section == "zoo":
                zoo = [{"family": f, "width": None, "batch": 256 if args.device == "cuda" else args.batches[0],
                        "precision": args.precisions[0], "compile": args.compile_modes[0], "placement": placement}
                       for f in others for placement in args.placements]
                run_cases(args, report, "zoo", zoo, root, work, budget, log)
            elif section == "tta":
                report.data["tta"] = time_to_accuracy(args, root, work)
            elif section == "ddp":
                report.data["ddp"] = ddp_launch(args, root, work, out, timeout=left + 60)
            elif section == "tests":
                report.data["tests"] = gpu_tests(out, timeout=left + 60)
            report.data["sections"].setdefault(section, "done")
        except Exception as e:  # noqa: BLE001 - record it and go on: the other sections still measure
            report.data["sections"][section] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        report.save()
        log(f"section {section}: {report.data['sections'][section]}")
    print((out / "gpu_check.md").read_text())
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {budget.used:.0f} s")
    failed = [s for s, v in report.data["sections"].items() if str(v).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.bench latency CKPT [--json OUT]``: inference latency and throughput of a checkpoint.

Backends, each on raw 1 s audio (log-mel included): eager PyTorch as trained, eager with the inference
copy of the network (the family's CPU inference copy, e.g. BatchNorm folded and channels-last), ``torch.compile``,
ONNX Runtime and TorchScript (both exported by :mod:`sctrain.export`). Batch-1 latency is measured with
one intra-op thread and with all cores; large-batch throughput with all cores. On a GPU (when present)
the same PyTorch backends run with the input already on the device. Last, the streaming detector's
real-time factor on one core with the default 100 ms hop, with variants (incremental features, the net
as trained, an ONNX Runtime net).

All cases are timed interleaved, in rounds of a few calls each, so a shared machine's changing load
falls on every backend alike; the JSON records the load average at the start and the end.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from sctrain.artifacts.files import CheckpointError
from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import AudioError
from sctrain.bench import setup_logging
from sctrain.inference.latency import cpu_name, summarize, time_calls
from sctrain.inference.loading import LoadedModel, load_model
from sctrain.models.registry import count_parameters
from sctrain.utils import first_line

log = logging.getLogger(__name__)

# make(device, threads) -> call(batch) -> logits; the batch is a tensor on the device or a numpy array.
Maker = Callable[[torch.device, int], Callable[[object], object]]



def _on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` on ``device``; a copy for a GPU, so the CPU cases keep theirs (``.to`` moves in place)."""
    return (module if device.type == "cpu" else copy.deepcopy(module).to(device)).eval()


def _torch_backend(module: torch.nn.Module) -> Maker:
    def make(device: torch.device, threads: int):
        m = _on(module, device)

        @torch.inference_mode()
        def call(x):
            return m(x)
        return call
    return make


def _compiled_backend(module: torch.nn.Module) -> Maker:
    compiled: dict = {}

    def make(device: torch.device, threads: int):
        if device.type not in compiled:  # one compiled module per device; shapes recompile on first use
            compiled[device.type] = torch.compile(_on(module, device), dynamic=False)
        m = compiled[device.type]

        @torch.inference_mode()
        def call(x):
            return m(x)
        return call
    return make


def _exported_backend(path: Path, kind: str) -> Maker:
    from sctrain.inference.export import OnnxModel, TorchScriptModel

    def make(device: torch.device, threads: int):
        if kind == "onnx":
            providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
            return OnnxModel(path, threads=threads, providers=providers)
        ts = TorchScriptModel(path, device).module  # map_location: frozen constants move too

        @torch.inference_mode()
        def call(x):
            return ts(x)
        return call
    return make


def build_backends(model: LoadedModel, workdir: Path, args: argparse.Namespace) -> dict[str, tuple[Maker, str]]:
    """name -> (maker, input kind); exporters that are unavailable are skipped with a note."""
    backends: dict[str, tuple[Maker, str]] = {
        "eager": (_torch_backend(model.classifier), "torch"),
        "eager-fast": (_torch_backend(model.cpu_classifier), "torch"),
    }
    if not args.no_compile:
        backends["compiled"] = (_compiled_backend(model.classifier), "torch")
    from sctrain.inference.export import ExportError, export_onnx, export_torchscript, require
    if not args.no_onnx:
        try:
            require("onnx", "onnxscript", "onnxruntime")
            path = export_onnx(model, workdir / "model.onnx")
            backends["onnxruntime"] = (_exported_backend(path, "onnx"), "numpy")
        except ExportError as e:
            log.warning("onnxruntime skipped: %s", e)
    if not args.no_torchscript:
        path = export_torchscript(model, workdir / "model.torchscript.pt")
        backends["torchscript"] = (_exported_backend(path, "torchscript"), "torch")
    return backends


@dataclass
class Case:
    """One measurement: a backend on a device with a thread count and a batch size."""

    device: torch.device
    backend: str
    threads: int
    batch: int
    call: Callable[[], object]
    times: list = field(default_factory=list)


def make_case(make: Maker, kind: str, device: torch.device, backend: str, threads: int, batch: int) -> Case:
    torch.set_num_threads(threads)
    x = torch.randn(batch, CLIP_SAMPLES, generator=torch.Generator().manual_seed(batch)) * 0.1
    x = x.numpy() if kind == "numpy" else x.to(device)
    fn = make(device, threads)
    return Case(device, backend, threads, batch, lambda: fn(x))


def run_interleaved(cases: list[Case], calls: int, block: int, warmup: int) -> list[Case]:
    """``calls`` timed calls per case, taken in rounds of ``block`` calls per case in turn, so that every
    case sees the same share of whatever else the machine is doing (a busy shared machine drifts by
    factors over minutes; back-to-back runs per backend would compare the drift, not the backends).
    Returns the cases that ran; one that fails on its first calls is reported and left out."""
    ready = []
    for case in cases:  # first calls: allocation, autotuning, torch.compile's compilation
        torch.set_num_threads(case.threads)
        try:
            time_calls(case.call, case.device, 0, warmup=warmup)
            ready.append(case)
        except Exception as e:  # noqa: BLE001 - e.g. a runtime without kernels for this device
            log.warning("%s on %s skipped: %s", case.backend, case.device, first_line(e, limit=200))
    for _ in range(max(1, calls // block)):
        for case in ready:
            torch.set_num_threads(case.threads)
            case.times.extend(time_calls(case.call, case.device, block, warmup=1))
    return ready


def streaming_rows(model: LoadedModel, args: argparse.Namespace) -> dict:
    """The detector's real-time factor on one thread with the 100 ms hop: the default settings, then one
    change each. The detectors take the same 100 ms chunks in turn, so they share the machine's load."""
    from sctrain.inference.streaming import StreamingDetector

    torch.set_num_threads(1)
    variants = {"default (fast net, whole-window features)": {},
                "incremental features": {"incremental": True},
                "net as trained (no BN folding, NCHW)": {"net": model.net}}
    with tempfile.TemporaryDirectory(prefix="sctrain-latency-") as tmp:
        if not args.no_onnx:
            from sctrain.inference.export import ExportError, OnnxModel, export_onnx
            try:
                ort_net = OnnxModel(export_onnx(model, Path(tmp) / "logmel.onnx", "logmel"), threads=1)
                variants["onnxruntime net (--input logmel export)"] = {
                    "net": lambda x: torch.from_numpy(ort_net(x.numpy()))}
            except ExportError as e:
                log.warning("onnxruntime streaming skipped: %s", e)
        detectors = {name: StreamingDetector(model, hop_ms=100.0, **kw) for name, kw in variants.items()}
        wave = (np.random.default_rng(0).standard_normal(int(args.stream_seconds * SAMPLE_RATE)) * 0.05)
        wave = wave.astype(np.float32)
        chunk = SAMPLE_RATE // 10
        for d in detectors.values():  # warm-up: first-call allocations
            d.process(wave[: 2 * SAMPLE_RATE], chunk)
            d.reset()
        for i in range(0, len(wave), chunk):
            for d in detectors.values():
                d.feed(wave[i: i + chunk])
    return {name: {"hop_ms": 100.0, "audio_s": d.audio_s, "windows": d.windows,
                   "real_time_factor": d.real_time_factor, "ms_per_window": 1e3 * d.compute_s / max(1, d.windows)}
            for name, d in detectors.items()}


def run(args: argparse.Namespace) -> dict:
    model = load_model(args.checkpoint)
    cores = args.threads or torch.get_num_threads()
    thread_counts = sorted({1, cores})
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    report: dict = {
        "checkpoint": str(args.checkpoint), "params": count_parameters(model.net),
        "model": model.config.model.name, "cpu_copy": model.cpu_net.description,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads_default": cores,
                    "gpu": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "iters": args.iters, "large_batch": args.large_batch, "results": {}}
    # Batch-1 cases take all cores or one; "all cores" is torch's default pool, what eager code gets unasked.
    try:
        import onnxruntime
        report["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="sctrain-latency-") as tmp:
        backends = build_backends(model, Path(tmp), args)
        small, large = [], []
        for device in devices:
            for name, (make, kind) in backends.items():
                if device.type == "cuda" and name == "onnxruntime" and not _ort_has_cuda():
                    continue
                # Compiled CPU kernels keep the thread count they were compiled with: batch 1 on one thread.
                counts = [cores] if device.type == "cuda" else [1] if name == "compiled" else thread_counts
                small += [make_case(make, kind, device, name, t, 1) for t in counts]
                large.append(make_case(make, kind, device, name, cores, args.large_batch))
        log.info("timing %d batch-1 and %d batch-%d cases, interleaved", len(small), len(large), args.large_batch)
        small = run_interleaved(small, args.iters, block=10, warmup=3)
        large = run_interleaved(large, max(3, args.iters // 20), block=1, warmup=1)
        for case in small + large:
            row = report["results"].setdefault(case.device.type, {}).setdefault(case.backend, {"batch1": {}})
            stats = {**summarize(np.asarray(case.times), case.batch), "threads": case.threads}
            if case.batch == 1:
                row["batch1"][str(case.threads)] = stats
            else:
                row["large_batch"] = stats
    torch.set_num_threads(cores)
    if args.stream_seconds > 0:
        report["streaming"] = streaming_rows(model, args)
        torch.set_num_threads(cores)
    _speedups(report)
    report["machine"]["load_avg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime
        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def _speedups(report: dict) -> None:
    """Each backend's best batch-1 p50 against eager PyTorch with its default thread pool."""
    for device, rows in report["results"].items():
        if not rows.get("eager", {}).get("batch1"):
            continue
        base = rows["eager"]["batch1"][max(rows["eager"]["batch1"], key=int)]["p50_ms"]
        for row in rows.values():
            if row["batch1"]:
                best = min(r["p50_ms"] for r in row["batch1"].values())
                row["best_batch1_p50_ms"] = best
                row["speedup_vs_eager"] = base / best


def table(report: dict) -> str:
    lines = []
    for device, rows in report["results"].items():
        counts = sorted({int(t) for r in rows.values() for t in r["batch1"]})
        head = ["backend"] + [f"b1 p50 {t}t" for t in counts] + ["b1 p95", "b1 p99", "best vs eager",
                                                                   f"b{report['large_batch']} clips/s"]
        lines.append(f"{device}: batch-1 latency (ms) and throughput; p95/p99 at the fastest thread count")
        lines.append(" | ".join(f"{h:>13}" for h in head))
        for name, row in rows.items():
            b1 = row["batch1"]
            fastest = min(b1.values(), key=lambda r: r["p50_ms"]) if b1 else None
            cells = [name] + [f"{b1[str(t)]['p50_ms']:.2f}" if str(t) in b1 else "-" for t in counts]
            cells += [f"{fastest['p95_ms']:.2f}" if fastest else "-", f"{fastest['p99_ms']:.2f}" if fastest else "-",
                      f"{row['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in row else "-",
                      f"{row['large_batch']['clips_per_s']:.0f}" if "large_batch" in row else "-"]
            lines.append(" | ".join(f"{c:>13}" for c in cells))
        lines.append("")
    for name, s in report.get("streaming", {}).items():
        lines.append(f"streaming {name}: real-time factor {s['real_time_factor']:.4f} on 1 thread "
                     f"({s['ms_per_window']:.2f} ms per window, hop {s['hop_ms']:.0f} ms)")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench latency", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="best_sc.pt")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    p.add_argument("--iters", type=int, default=200, help="timed batch-1 calls per measurement (default 200)")
    p.add_argument("--large-batch", type=int, default=256, help="throughput batch size (default 256)")
    p.add_argument("--threads", type=int, default=0, help="threads for 'all cores' (default: torch's default)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (about 40 s of compiling on a CPU)")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--no-torchscript", action="store_true", help="skip TorchScript")
    p.add_argument("--cpu-only", action="store_true", help="skip the GPU even when one is present")
    p.add_argument("--stream-seconds", type=float, default=30.0, help="audio streamed for the RTF (0 = skip)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.large_batch < 1 or args.threads < 0 or args.stream_seconds < 0:
        p.error("--iters and --large-batch must be >= 1, --threads and --stream-seconds >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    for noisy in ("torch._dynamo", "torch._inductor", "torch.onnx", "torch.export", "torch.utils.cpp_extension"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # The STFT stays an eager (complex-valued) kernel inside the compiled graph; inductor says so per compile.
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
    try:
        report = run(args)
    except (CheckpointError, AudioError) as e:
        print(f"sctrain: error: {e}", file=sys.stderr)
        return 2
    print(table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.bench stateful [CKPT ...] [--family kwsnet dscnn]``: CPU time per hop of the stateful
streaming model against recomputing the 1 s window, on one thread.

Per model, four rows: the windowed model in PyTorch (the CPU inference copy with its front end: what
:class:`~sctrain.inference.streaming.StreamingDetector` runs per hop by default) and in ONNX Runtime (a
``python -m sctrain.export --format onnx`` file), and the stateful model in PyTorch
(:class:`~sctrain.inference.stateful.TorchStateful`) and in ONNX Runtime (a ``--streaming`` file), each
timed over ``--iters`` consecutive hops of a stream (p50/p95 ms per hop, after warm-up calls). A checkpoint
also gets the stream check: the events of the windowed and the stateful detector over its test clips joined
into one stream, which must be the same. ``--family`` measures a freshly initialised streaming network of that
family at its default size (the per-hop cost does not depend on the weights). Prints a table and writes JSON
and markdown; the machine's load average is recorded before and after: on a busy machine the figures are not
benchmarks.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from sctrain.artifacts.files import CheckpointError
from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.bench import setup_logging
from sctrain.inference import export, stateful, stateful_export
from sctrain.inference.latency import cpu_name, summarize, time_calls
from sctrain.inference.loading import LoadedModel, load_model
from sctrain.models.registry import count_parameters

log = logging.getLogger(__name__)


def fresh_model(family: str, labels: int = 10) -> LoadedModel:
    """A freshly initialised streaming network of ``family`` at its default size, with the family's front end
    (``configs/models/<family>.yaml``'s features) made streamable."""
    from sctrain.audio.features import LogMel
    from sctrain.config import load_config
    from sctrain.models.classifier import AudioClassifier
    from sctrain.models.registry import create_model, get_family

    overrides = [f"model.name={family}", f"model.{family}.time_padding=valid", "features.center=false",
                 "features.normalise=none", *(f"features.{k}={v}" for k, v in get_family(family).features.items())]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    net = create_model(cfg.model, cfg.features, labels)
    names = [f"word{i}" for i in range(labels)]
    return LoadedModel(AudioClassifier(LogMel(cfg.features), net).eval(), names, cfg, Path(f"fresh {family}"))


def _per_hop(run: Callable[[np.ndarray], object], chunks: list[np.ndarray], iters: int) -> dict:
    """ms per call over successive chunks (cycled), after 10 warm-up calls."""
    position = itertools.count()
    times = time_calls(lambda: run(chunks[next(position) % len(chunks)]), torch.device("cpu"), iters, warmup=10)
    return summarize(times, 1)


def measure(model: LoadedModel, hop: Optional[int], iters: int, tmp: Path) -> dict:
    runner = stateful.TorchStateful(model, hop)
    plan = runner.net.plan
    rng = np.random.default_rng(0)
    stream = (rng.standard_normal(CLIP_SAMPLES + (iters + 20) * plan.hop) * 0.05).astype(np.float32)
    hops = [stream[i: i + plan.hop] for i in range(0, len(stream) - plan.hop + 1, plan.hop)]
    windows = [stream[None, i: i + CLIP_SAMPLES] for i in range(0, len(stream) - CLIP_SAMPLES + 1, plan.hop)]
    rows = {}

    @torch.inference_mode()
    def torch_window(window: np.ndarray) -> np.ndarray:
        return model.cpu_classifier(torch.from_numpy(window)).numpy()
    rows["torch windowed"] = _per_hop(torch_window, windows, iters)
    runner.reset()
    rows["torch stateful"] = _per_hop(runner, hops, iters)
    onnx_window = export.export_onnx(model, tmp / "window.onnx")
    rows["onnx windowed"] = _per_hop(export.load_exported(onnx_window), windows, iters)
    ort_runner = stateful_export.OnnxStateful(stateful_export.export_stateful_onnx(model, tmp / "m.stream.onnx",
                                                                                   plan.hop))
    rows["onnx stateful"] = _per_hop(ort_runner, hops, iters)
    for backend in ("torch", "onnx"):
        rows[f"{backend} stateful"]["speedup"] = (rows[f"{backend} windowed"]["p50_ms"]
                                                  / rows[f"{backend} stateful"]["p50_ms"])
    return {"model": model.config.model.name, "source": str(model.path), "params": count_parameters(model.net),
            "hop_ms": plan.hop_ms, "plan": plan.to_dict(), "rows": rows}


def same_detections(model: LoadedModel, hop: Optional[int], clips: int) -> dict:
    """Events of the windowed and the stateful detector over ``clips`` test clips joined into one stream."""
    from sctrain.data.clips import split_audio
    from sctrain.inference.streaming import StreamingDetector

    audio, _ = split_audio(model.config.data, "test", clips)
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    wave = np.concatenate([part for clip in audio for part in (gap, clip)])
    runner = stateful.TorchStateful(model, hop)
    windowed = StreamingDetector(model, hop_ms=runner.net.plan.hop_ms).process(wave)
    streamed = StreamingDetector(model, stateful=runner).process(wave)
    key = [(e.label, round(e.start_s, 3)) for e in windowed]
    return {"stream_s": len(wave) / SAMPLE_RATE, "events_windowed": len(windowed), "events_stateful": len(streamed),
            "same": key == [(e.label, round(e.start_s, 3)) for e in streamed]}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, 1 thread, torch {m['torch']}, {m['date']}, load average "
             f"{m['load_avg_at_start']} -> {m['load_avg_at_end']}.", "",
             "| model | hop (ms) | row | p50 ms/hop | p95 ms/hop | stateful speed-up (p50) |",
             "|---|---:|---|---:|---:|---:|"]
    for entry in report["models"]:
        for name, row in entry["rows"].items():
            speedup = f"{row['speedup']:.1f}x" if "speedup" in row else ""
            lines.append(f"| {entry['model']} ({entry['source']}) | {entry['hop_ms']:g} | {name} | "
                         f"{row['p50_ms']:.3f} | {row['p95_ms']:.3f} | {speedup} |")
        if "detections" in entry:
            d = entry["detections"]
            lines.append(f"\n{entry['source']}: {d['stream_s']:.0f} s stream, {d['events_windowed']} events windowed, "
                         f"{d['events_stateful']} stateful, same: {d['same']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench stateful", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", help="best_sc.pt files trained to stream (docs/deploy.md)")
    p.add_argument("--family", nargs="+", default=[], choices=list(stateful.STREAMING_FAMILIES),
                   help="also measure a freshly initialised streaming network of these families")
    p.add_argument("--hop-ms", type=float, help="ms per call (default: the smallest multiple of the network's "
                                                "stride of at least 100 ms)")
    p.add_argument("--iters", type=int, default=300, help="timed hops per row (default 300)")
    p.add_argument("--stream-clips", type=int, default=100,
                   help="checkpoints: test clips joined into the stream of the detection check (default 100)")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")
    p.add_argument("--markdown", metavar="OUT", help="write the table as markdown to OUT")
    args = p.parse_args(argv)
    if not args.checkpoints and not args.family:
        p.error("give a checkpoint or --family")
    if args.iters < 1:
        p.error("--iters must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from sctrain.artifacts.detector import hop_samples
    from sctrain.data.speechcommands import DatasetError

    torch.set_num_threads(1)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": 1, "torch": torch.__version__,
               "python": platform.python_version(),
               "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    report = {"machine": machine, "models": []}
    try:
        hop = None if args.hop_ms is None else hop_samples(args.hop_ms, "--hop-ms")
        with tempfile.TemporaryDirectory(prefix="sctrain-stateful-") as tmp:
            for path in args.checkpoints:
                model = load_model(path)
                entry = measure(model, hop, args.iters, Path(tmp))
                entry["detections"] = same_detections(model, hop, args.stream_clips)
                report["models"].append(entry)
            for family in args.family:
                report["models"].append(measure(fresh_model(family), hop, args.iters, Path(tmp)))
    except (CheckpointError, DatasetError, export.ExportError, stateful.StreamingError, ValueError) as e:
        print(f"sctrain: error: {e}", file=sys.stderr)
        return 2
    machine["load_avg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = markdown(report)
    print(text)
    for out, content in ((args.json, json.dumps(report, indent=2)), (args.markdown, text)):
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(content)
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

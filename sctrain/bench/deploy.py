"""``python -m sctrain.bench deploy CKPT``: every deployable format of a checkpoint, side by side.

Per format (PyTorch float, ONNX float, ONNX int8, TorchScript, LiteRT float and int8 where ``sctrain[edge]``
is installed): file size, accuracy on the checkpoint's test split (read from its ``data.root``, the clips
and labels the training run tested on), top-1 agreement with PyTorch float on those clips, the largest
class-probability difference, batch-1 latency of one 1 s clip on one thread (p50/p95; LiteRT files take
features, so their figure includes the PyTorch front end), and for int8 the accuracy change against float.
Every file is written by the same code as ``python -m sctrain.export`` (with its parity check). Prints a
table and writes JSON and markdown.
"""
from __future__ import annotations

import argparse
import datetime
import io
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
from sctrain.audio.io import AudioError
from sctrain.bench import setup_logging
from sctrain.inference import export, quantize
from sctrain.inference.latency import cpu_name, summarize, time_calls
from sctrain.inference.loading import LoadedModel, load_model
from sctrain.models.registry import count_parameters

log = logging.getLogger(__name__)

# name -> (format, input, int8)
FORMATS = {
    "onnx": ("onnx", "audio", False),
    "onnx-int8": ("onnx", "audio", True),
    "torchscript": ("torchscript", "audio", False),
    "tflite": ("tflite", "logmel", False),
    "tflite-int8": ("tflite", "logmel", True),
    "tflite-audio": ("tflite", "audio", False),  # the real-valued front end inside: measured on request only
}
DEFAULT_FORMATS = [name for name in FORMATS if name != "tflite-audio"]


def _torch_row(model: LoadedModel) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)

    @torch.inference_mode()
    def run(audio: np.ndarray) -> np.ndarray:
        return model.cpu_classifier(torch.from_numpy(audio)).numpy()
    return run, len(buf.getvalue())


def _file_row(model: LoadedModel, exported: export.ExportedModel) -> Callable[[np.ndarray], np.ndarray]:
    if exported.input == "audio":
        return exported

    def run(audio: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            feats = model.features(torch.from_numpy(audio)).numpy()
        return exported(feats)
    return run


def measure(run: Callable[[np.ndarray], np.ndarray], audio: np.ndarray, labels: np.ndarray,
            reference: Optional[np.ndarray], iters: int) -> tuple[dict, np.ndarray]:
    """Accuracy (and agreement with ``reference`` logits) over ``audio``, then batch-1 latency."""
    logits = np.concatenate([run(audio[i: i + 64]) for i in range(0, len(audio), 64)])
    row = {"test_acc": float((logits.argmax(1) == labels).mean())}
    if reference is not None:
        row["agreement"] = float((logits.argmax(1) == reference.argmax(1)).mean())
        row["max_prob_diff"] = float(np.abs(export.softmax(logits) - export.softmax(reference)).max())
    one = audio[:1]
    row["batch1"] = summarize(time_calls(lambda: run(one), torch.device("cpu"), iters), 1)
    return row, logits


def run_bench(args: argparse.Namespace) -> dict:
    from sctrain.data.clips import split_audio

    torch.set_num_threads(1)
    model = load_model(args.checkpoint)
    audio, labels = split_audio(model.config.data, "test", args.test_clips)
    check = audio[np.linspace(0, len(audio) - 1, min(32, len(audio))).round().astype(int)]
    calibration = quantize.calibration_audio(model, args.calibration_clips)
    report = {"checkpoint": str(args.checkpoint), "model": model.config.model.name,
              "params": count_parameters(model.net), "test_split": str(model.config.data.root),
              "test_clips": len(audio), "calibration_clips": len(calibration),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": 1, "torch": torch.__version__,
                          "python": platform.python_version(),
                          "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
                          "date": datetime.datetime.now().isoformat(timespec="seconds")},
              "rows": {}, "skipped": {}}
    run, size = _torch_row(model)
    row, reference = measure(run, audio, labels, None, args.iters)
    report["rows"]["torch"] = {"input": "audio", "int8": False, "bytes": size, **row,
                               "agreement": 1.0, "max_prob_diff": 0.0}
    with tempfile.TemporaryDirectory(prefix="sctrain-deploy-") as tmp:
        for name in args.formats:
            fmt, kind, int8 = FORMATS[name]
            out = Path(tmp) / f"model{'.int8' if int8 else ''}{export.SUFFIX[fmt]}"
            # The check clips include the test split's quiet _silence_ cuts, where float front ends differ most
            # (log of tiny mel energies): 1e-2 here; the table's agreement column is the measure.
            tolerance = export.Tolerance.int8() if int8 else export.Tolerance(atol=1e-2)
            try:
                export.write_checked(model, out, fmt, kind, check, tolerance, int8=int8, calibration=calibration)
            except export.ExportError as e:
                log.warning("%s skipped: %s", name, e)
                report["skipped"][name] = str(e)
                continue
            log.info("%s: written (%d bytes); measuring", name, out.stat().st_size)
            row, _ = measure(_file_row(model, export.load_exported(out)), audio, labels, reference, args.iters)
            report["rows"][name] = {"input": kind, "int8": int8, "bytes": out.stat().st_size, **row}
    rows = report["rows"]
    for name, row in rows.items():
        if row["int8"]:
            base = rows.get(name.removesuffix("-int8"))
            if base:
                row["acc_change_vs_float"] = row["test_acc"] - base["test_acc"]
                row["size_ratio_vs_float"] = row["bytes"] / base["bytes"]
    report["machine"]["load_avg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Checkpoint `{report['checkpoint']}` ({report['model']}, {report['params']:,} params); "
             f"test split of `{report['test_split']}` ({report['test_clips']} clips); int8 calibrated on "
             f"{report['calibration_clips']} training clips. {m['cpu']}, {m['cores']} cores, 1 thread, "
             f"torch {m['torch']}, {m['date']}, load average {m['load_avg_at_start']} -> {m['load_avg_at_end']}.",
             "",
             "| format | input | size (KB) | test acc | agreement with float | max prob diff | int8 acc change | "
             "b1 p50 (ms) | b1 p95 (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["rows"].items():
        change = f"{100 * r['acc_change_vs_float']:+.2f} pts" if "acc_change_vs_float" in r else ""
        lines.append(f"| {name} | {r['input']} | {r['bytes'] / 1024:.1f} | {100 * r['test_acc']:.2f} % | "
                     f"{100 * r['agreement']:.2f} % | {r['max_prob_diff']:.3f} | {change} | "
                     f"{r['batch1']['p50_ms']:.2f} | {r['batch1']['p95_ms']:.2f} |")
    for name, why in report["skipped"].items():
        lines.append(f"\n{name}: skipped ({why})")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="best_sc.pt")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")
    p.add_argument("--markdown", metavar="OUT", help="write the table as markdown to OUT")
    p.add_argument("--formats", nargs="+", choices=list(FORMATS), default=DEFAULT_FORMATS,
                   help=f"formats to export and measure besides PyTorch (default: {' '.join(DEFAULT_FORMATS)}; "
                        "tflite needs sctrain[edge])")
    p.add_argument("--iters", type=int, default=100, help="timed batch-1 calls per format (default 100)")
    p.add_argument("--test-clips", type=int, default=0, help="test clips to score (default 0: the whole split)")
    p.add_argument("--calibration-clips", type=int, default=quantize.CALIBRATION_CLIPS,
                   help=f"int8 calibration clips from the training split (default {quantize.CALIBRATION_CLIPS})")
    args = p.parse_args(argv)
    if args.iters < 1 or args.test_clips < 0 or args.calibration_clips < 1:
        p.error("--iters and --calibration-clips must be >= 1, --test-clips >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from sctrain.data.speechcommands import DatasetError

    try:
        report = run_bench(args)
    except (CheckpointError, AudioError, DatasetError) as e:
        print(f"sctrain: error: {e}", file=sys.stderr)
        return 2
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

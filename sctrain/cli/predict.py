"""``python -m sctrain.predict CKPT FILE [FILE ...]``: top-k keywords per file, or detections with ``--stream``.

Files may have any sample rate, channel count and length (see :mod:`sctrain.inference.predict`). A file that cannot
be read gets a one-line error and the others are still scored; the exit status is then 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Optional

EXIT_ERROR = 2

EPILOG = """\
examples:
  python -m sctrain.predict runs/sc/best_sc.pt clip.wav other.flac --top-k 3
  python -m sctrain.predict runs/sc/best_sc.pt long_recording.wav --stream --json
  python -m sctrain.predict runs/sc/best_sc.pt long_recording.wav --stream --threshold 0.7

--stream uses the per-keyword thresholds calibrated after training (stored in best_sc.pt; kws.calibrate),
or 0.5 for a checkpoint without them; --threshold sets one value for every keyword instead. The smoothing,
refractory time and filler gate are by default the ones those thresholds were calibrated under (stored
with them; else the checkpoint's kws config); --smooth, --refractory-ms and --[no-]filler-gate override them.
--smooth counts windows, so at another --hop-ms the stored smoothing spans another time: a note says how long.
Files are read in 10 s blocks: hours of audio take the memory of one block (docs/streaming.md).

Runs on one thread unless --threads says otherwise: a 1 s clip is too little work per operator for a
thread pool to pay reliably, and on a busy machine PyTorch's OpenMP pool makes batch-1 inference many
times slower (python -m sctrain.bench latency measures both).
"""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.predict", epilog=EPILOG,
                                description="Classify audio files (or spot keywords in them) with a best_sc.pt.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="best_sc.pt written by training")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any rate, channels, length)")
    p.add_argument("--top-k", type=int, default=3, help="labels shown per file (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (default 1)")
    s = p.add_argument_group("streaming (--stream)")
    s.add_argument("--stream", action="store_true", help="slide a 1 s window over each file and report keyword events")
    s.add_argument("--hop-ms", type=float, default=None,
                   help="window hop in ms (default 100; with --stateful, the file's)")
    s.add_argument("--stateful", metavar="FILE",
                   help="a stateful streaming ONNX file of the checkpoint (python -m sctrain.export CKPT --format onnx "
                        "--streaming): each hop computes only its new frames, with the same events")
    s.add_argument("--threshold", type=float, default=None,
                   help="smoothed keyword posterior that opens an event, for every keyword (default: the "
                        "checkpoint's calibrated per-keyword thresholds, else 0.5)")
    s.add_argument("--smooth", type=int, default=None,
                   help="windows averaged before thresholding (default: the checkpoint's rules)")
    s.add_argument("--refractory-ms", type=float, default=None,
                   help="no new event this long after one (default: the checkpoint's rules)")
    s.add_argument("--filler-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="a keyword counts only while above the _silence_/_unknown_ posteriors (default: the "
                        "checkpoint's rules)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    from sctrain.artifacts.detector import hop_samples  # no torch: bad arguments stay quick

    if args.stateful and not args.stream:
        p.error("--stateful needs --stream")
    if args.hop_ms is None and not args.stateful:
        args.hop_ms = 100.0
    try:
        if args.hop_ms is not None:
            hop_samples(args.hop_ms, "--hop-ms")  # the detector's own rule
    except ValueError as e:
        p.error(str(e))
    if args.threshold is not None and not 0 < args.threshold <= 1:
        p.error(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.smooth is not None and args.smooth < 1:
        p.error(f"--smooth must be >= 1, got {args.smooth}")
    if args.refractory_ms is not None and not 0 <= args.refractory_ms < math.inf:
        p.error(f"--refractory-ms must be a finite number >= 0, got {args.refractory_ms:g}")
    return args


def _stream_file(model, path: str, args: argparse.Namespace) -> dict:
    from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
    from sctrain.audio.io import read_audio_blocks
    from sctrain.inference.events import threshold_dict
    from sctrain.inference.streaming import StreamingDetector

    detector = StreamingDetector(model, hop_ms=args.hop_ms, threshold=args.threshold, smooth=args.smooth,
                                 refractory_ms=args.refractory_ms, filler_gate=args.filler_gate,
                                 stateful=getattr(args, "runner", None))
    # Read block by block: a recording of hours takes the memory of one block, with the same events.
    events = detector.process_blocks(read_audio_blocks(path))
    result = {"file": path, "duration_s": detector.audio_s, "events": [e.to_dict() for e in events],
              "windows": detector.windows, "real_time_factor": detector.real_time_factor,
              "thresholds": threshold_dict(detector.labels, detector.threshold), "detector": detector.rules.to_dict(),
              "smooth_ms": detector.smooth * detector.hop * 1000 / detector.decoder.sample_rate}
    if not detector.windows:
        result["note"] = f"shorter than one window ({CLIP_SAMPLES / SAMPLE_RATE:g} s): nothing scored"
    return result


def _load_stateful(model, args: argparse.Namespace) -> None:
    """``args.runner``: the ``--stateful`` file in ONNX Runtime, checked against the checkpoint and ``--hop-ms``."""
    from sctrain.inference.streaming import stateful_runner

    args.runner = stateful_runner(args.stateful, model.labels)
    hop_ms = args.runner.hop * 1000 / model.features.sample_rate
    if args.hop_ms is not None and args.hop_ms != hop_ms:
        raise ValueError(f"--hop-ms {args.hop_ms:g}: {args.stateful} runs every {hop_ms:g} ms (fixed at export)")
    args.hop_ms = hop_ms


def smoothing_note(model, args: argparse.Namespace) -> str | None:
    """A line when ``--hop-ms`` changes the time the checkpoint's smoothing spans: ``smooth`` counts windows,
    so the rules calibrated at a 100 ms hop average a different stretch of audio at another hop."""
    from sctrain.inference.streaming import model_rules

    if args.smooth is not None or args.hop_ms == 100.0:
        return None
    smooth = model_rules(model).smooth
    return (f"note: smoothing averages {smooth} windows, {smooth * args.hop_ms:g} ms at --hop-ms {args.hop_ms:g} "
            f"({smooth * 100} ms at the 100 ms hop its thresholds were calibrated at); --smooth N sets the count")


def _text(result: dict) -> str:
    if "error" in result:
        return f"{result['file']}: error: {result['error']}"
    if "events" in result:
        lines = [f"{result['file']}: {len(result['events'])} detections in {result['duration_s']:.2f} s "
                 f"({result['windows']} windows, real-time factor {result['real_time_factor']:.3f})"
                 + (f": {result['note']}" if "note" in result else "")]
        lines += [f"  {e['start_s']:8.2f} s  {e['label']:<10} {e['score']:.3f}" for e in result["events"]]
        return "\n".join(lines)
    top = "  ".join(f"{t['label']} {t['prob']:.3f}" for t in result["top"])
    where = (f"  (best of {result['windows']} windows: {result['window_start_s']:.2f} s of "
             f"{result['duration_s']:.2f} s)" if result["windows"] > 1 else "")
    return f"{result['file']}: {top}{where}"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    import torch

    from sctrain.artifacts.files import CheckpointError
    from sctrain.audio.io import AudioError
    from sctrain.inference.loading import load_model
    from sctrain.inference.predict import predict_file

    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.checkpoint)
        if args.stateful:
            _load_stateful(model, args)
    except (CheckpointError, ValueError, RuntimeError) as e:  # ExportError is a RuntimeError
        print(f"sctrain: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    note = smoothing_note(model, args) if args.stream else None
    if note:
        print(note, file=sys.stderr)
    results, failed = [], 0
    for path in args.files:
        try:
            result = _stream_file(model, path, args) if args.stream else predict_file(model, path, args.top_k)
        except AudioError as e:
            failed += 1
            print(f"sctrain: error: {e}", file=sys.stderr)
            result = {"file": path, "error": str(e)}
        results.append(result)
        if not args.json and "error" not in result:
            print(_text(result), flush=True)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "labels": model.labels, "results": results}, indent=2))
    return EXIT_ERROR if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.export CKPT --format onnx|torchscript|tflite [--int8]``: a deployable model file, checked
against PyTorch (:mod:`sctrain.inference.export` does the work and documents the files)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from sctrain.inference import export, quantize


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sctrain.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a best_sc.pt to ONNX (float or int8), TorchScript or LiteRT (float or int8) and "
                    "check it against PyTorch on real clips.",
        epilog=export.__doc__[export.__doc__.index("Two inputs"):])
    p.add_argument("checkpoint", help="best_sc.pt written by training")
    p.add_argument("--format", choices=export.FORMATS, required=True,
                   help="onnx (needs sctrain[deploy]), torchscript or tflite (LiteRT, needs sctrain[edge])")
    p.add_argument("--input", choices=export.INPUTS,
                   help="audio: raw 16 kHz [batch, 16000], features in the graph (default for onnx, torchscript); "
                        "logmel: [batch, 1, n_mels, frames] (default for tflite: audio-in tflite files carry a "
                        "1-4 MB DFT basis)")
    p.add_argument("--out", help="output file (default: next to the checkpoint, e.g. best_sc.onnx)")
    p.add_argument("--check-audio", nargs="+", metavar="PATH",
                   help="real clips (files or folders) for the parity check (default: the checkpoint's data.root)")
    p.add_argument("--check-clips", type=int, default=32, help="clips used for the parity check (default 32)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest allowed |logit difference| of a float file (default 1e-3)")
    p.add_argument("--int8", action="store_true",
                   help="int8 static quantization of the network (onnx: ONNX Runtime's quantize_static, QDQ; tflite: "
                        "PyTorch's PT2E flow; the front end stays float32); checked by agreement, not bitwise: see "
                        "--min-agreement, --max-prob-diff")
    p.add_argument("--calibration-clips", type=int, default=quantize.CALIBRATION_CLIPS,
                   help=f"int8: clips of the checkpoint's training split that calibrate the activation ranges "
                        f"(default {quantize.CALIBRATION_CLIPS})")
    p.add_argument("--calibration-audio", nargs="+", metavar="PATH",
                   help="int8: calibrate on these files or folders instead of the training split")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="int8: smallest share of check clips whose argmax must match PyTorch's (default 0.9)")
    p.add_argument("--max-prob-diff", type=float, default=0.35,
                   help="int8: largest allowed |class probability difference| on a check clip (default 0.35)")
    p.add_argument("--streaming", action="store_true",
                   help="onnx: a stateful streaming model (one hop of audio and the state tensors in, logits and the "
                        "new state out), checked against the windowed model on the check clips joined into one "
                        "stream; needs a checkpoint trained with features.center: false, features.normalise: none "
                        "and model.<family>.time_padding: valid (kwsnet, dscnn); see docs/deploy.md")
    p.add_argument("--hop-ms", type=float,
                   help="--streaming: audio per call, a multiple of the network's time stride (default: the "
                        "smallest such multiple of at least 100 ms: 160 ms for kwsnet at a 10 ms feature hop)")
    p.add_argument("--manifest", action="store_true",
                   help="also write FILE.manifest.json: labels, thresholds, detector rules, the front end as numbers "
                        "(window, mel filterbank, DCT), size, SHA-256 and the parity result, for device programs")
    args = p.parse_args(argv)
    if args.check_clips < 1:
        p.error(f"--check-clips must be >= 1, got {args.check_clips}")
    if args.calibration_clips < 1:
        p.error(f"--calibration-clips must be >= 1, got {args.calibration_clips}")
    if not 0 <= args.min_agreement <= 1 or not 0 <= args.max_prob_diff <= 1:
        p.error("--min-agreement and --max-prob-diff must lie in [0, 1]")
    if args.int8 and args.format not in export.INT8_FORMATS:
        p.error(f"--int8 needs --format {' or '.join(export.INT8_FORMATS)}")
    if args.streaming and (args.format != "onnx" or args.int8 or args.input == "logmel" or args.manifest):
        p.error("--streaming needs --format onnx, float, audio input, no --manifest")
    if args.hop_ms is not None and not args.streaming:
        p.error("--hop-ms is for --streaming")
    if args.hop_ms is not None:
        from sctrain.artifacts.detector import hop_samples

        try:
            hop_samples(args.hop_ms, "--hop-ms")
        except ValueError as e:
            p.error(str(e))
    if args.input is None:
        args.input = "logmel" if args.format == "tflite" else "audio"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    from sctrain.artifacts.files import CheckpointError
    from sctrain.audio.io import AudioError
    from sctrain.data.speechcommands import DatasetError
    from sctrain.inference.loading import load_model
    from sctrain.inference.stateful import StreamingError

    try:
        if args.format == "onnx":
            export.require("onnx", "onnxscript", "onnxruntime")  # before any work: parity needs the runtime too
        if args.format == "tflite":
            export.require("litert_torch", "ai_edge_litert", hint=export.EDGE_HINT)
        model = load_model(args.checkpoint)
        if args.streaming:  # before any audio is read: a checkpoint that cannot stream says so first
            from sctrain.inference.stateful import plan_stream

            plan_stream(model, _hop(args))
        sources = args.check_audio or [model.config.data.root]
        clips = export.find_clips(sources, args.check_clips)
        if not clips:
            why = "; ".join(map(export.why_no_clips, sources))
            raise export.ExportError(f"no audio clips for the parity check ({why}): pass --check-audio FILE_OR_FOLDER")
        audio = export.clip_batch(clips)
        if args.streaming:
            return _export_streaming(args, model, audio)
        out = (Path(args.out) if args.out else
               export.default_out(Path(args.checkpoint), args.format, args.input, args.int8))
        tolerance = (export.Tolerance.int8(args.min_agreement, args.max_prob_diff) if args.int8
                     else export.Tolerance(atol=args.atol))
        calibration = None
        if args.int8 and args.calibration_audio:
            files = export.find_clips(args.calibration_audio, args.calibration_clips)
            if not files:
                raise export.ExportError(f"no audio clips in {', '.join(args.calibration_audio)} (--calibration-audio)")
            calibration = export.clip_batch(files)
        result = export.write_checked(model, out, args.format, args.input, audio, tolerance, int8=args.int8,
                                      calibration_clips=args.calibration_clips, calibration=calibration)
        if args.manifest:
            from sctrain.inference.manifest import write_manifest

            manifest = write_manifest(model, out, export.load_exported(out).meta, result)
    except (CheckpointError, AudioError, DatasetError, export.ExportError, StreamingError) as e:
        print(f"sctrain: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.format}{' int8' if args.int8 else ''}, input {args.input}, {len(model.labels)} labels, "
          f"{out.stat().st_size / 1e6:.2f} MB)")
    print(f"parity on {result['clips']} real clips: max |logit diff| = {result['max_abs_diff']:.3g}, "
          f"max |prob diff| = {result['max_prob_diff']:.3g}, argmax agrees {result['argmax_agree']}/{result['clips']}")
    if args.manifest:
        print(f"wrote {manifest}")
    return 0


def _hop(args: argparse.Namespace) -> Optional[int]:
    from sctrain.artifacts.detector import hop_samples

    return None if args.hop_ms is None else hop_samples(args.hop_ms, "--hop-ms")


def _export_streaming(args: argparse.Namespace, model, audio) -> int:
    """``--streaming``: the stateful ONNX file, checked over the check clips as one stream."""
    from sctrain.inference import stateful_export

    out = Path(args.out) if args.out else stateful_export.default_stream_out(Path(args.checkpoint))
    result = stateful_export.write_stateful_checked(model, out, audio.reshape(-1), export.Tolerance(atol=args.atol),
                                                    _hop(args))
    hop_ms = result["hop_samples"] * 1000 / 16000
    print(f"wrote {out} (onnx, stateful streaming, {hop_ms:g} ms per call, {len(model.labels)} labels, "
          f"{out.stat().st_size / 1e6:.2f} MB)")
    print(f"stream parity over {result['stream_s']:.0f} s of real clips, {result['clips']} windows: max |logit diff| = "
          f"{result['max_abs_diff']:.3g}, max |prob diff| = {result['max_prob_diff']:.3g}, argmax agrees "
          f"{result['argmax_agree']}/{result['clips']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

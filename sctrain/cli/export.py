"""``python -m sctrain.export CKPT --format onnx|torchscript``: a deployable model file, checked against PyTorch
(:mod:`sctrain.inference.export` does the work and documents the files)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from sctrain.inference import export


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sctrain.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a best_sc.pt to ONNX or TorchScript and check it against PyTorch on real clips.",
        epilog=export.__doc__[export.__doc__.index("Two inputs"):])
    p.add_argument("checkpoint", help="best_sc.pt written by training")
    p.add_argument("--format", choices=export.FORMATS, required=True,
                   help="onnx (needs sctrain[deploy]) or torchscript")
    p.add_argument("--input", choices=export.INPUTS, default="audio",
                   help="audio: raw 16 kHz [batch, 16000], features in the graph (default); "
                        "logmel: [batch, 1, n_mels, frames]")
    p.add_argument("--out", help="output file (default: next to the checkpoint, e.g. best_sc.onnx)")
    p.add_argument("--check-audio", nargs="+", metavar="PATH",
                   help="real clips (files or folders) for the parity check (default: the checkpoint's data.root)")
    p.add_argument("--check-clips", type=int, default=32, help="clips used for the parity check (default 32)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest allowed |logit difference| (default 1e-3)")
    args = p.parse_args(argv)
    if args.check_clips < 1:
        p.error(f"--check-clips must be >= 1, got {args.check_clips}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    from sctrain.artifacts.files import CheckpointError
    from sctrain.audio.io import AudioError
    from sctrain.inference.loading import load_model

    try:
        if args.format == "onnx":
            export.require("onnx", "onnxscript", "onnxruntime")  # before any work: parity needs the runtime too
        model = load_model(args.checkpoint)
        sources = args.check_audio or [model.config.data.root]
        clips = export.find_clips(sources, args.check_clips)
        if not clips:
            why = "; ".join(map(export.why_no_clips, sources))
            raise export.ExportError(f"no audio clips for the parity check ({why}): pass --check-audio FILE_OR_FOLDER")
        audio = export.clip_batch(clips)
        out = Path(args.out) if args.out else export.default_out(Path(args.checkpoint), args.format, args.input)
        result = export.write_checked(model, out, args.format, args.input, audio, args.atol)
    except (CheckpointError, AudioError, export.ExportError) as e:
        print(f"sctrain: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.format}, input {args.input}, {len(model.labels)} labels, "
          f"{out.stat().st_size / 1e6:.2f} MB)")
    print(f"parity on {result['clips']} real clips: max |logit diff| = {result['max_abs_diff']:.3g}, "
          f"argmax agrees {result['argmax_agree']}/{result['clips']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

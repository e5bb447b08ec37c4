"""``python -m sctrain.streameval CKPT``: keyword spotting on long streams built from a held-out split.

The checkpoint's own data config locates (and packs, if needed) the dataset. A stream of ``--minutes``
is built from the ``--split`` clips (keywords every ~3 s over background noise, then noise alone, then
non-keyword words when the task has them), its windows are scored once, and the detector's decisions are
replayed: with the thresholds StreamingDetector uses by default (the checkpoint's calibrated ones, else 0.5),
along a DET curve, and with per-keyword thresholds calibrated for
``--target-fa-per-hour`` on a stream built the same way from the validation split. Writes
``streameval.json``, ``streameval_det.png`` and ``streameval.md`` into ``--out``. Exit status 2, with one
line on stderr, for input that cannot be used.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

EXIT_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.streameval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="best_sc.pt written by training")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's data.root); never downloads")
    p.add_argument("--split", default="test", choices=("test", "validation"), help="clips of the stream (default test)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of each stream (default 10)")
    p.add_argument("--noise", help="folder of noise recordings (default: the dataset's _background_noise_)")
    p.add_argument("--target-fa-per-hour", type=float, default=1.0,
                   help="false alarms per hour per keyword that calibration aims at (default 1)")
    p.add_argument("--seed", type=int, default=0, help="stream seed (default 0; the validation stream uses seed+1)")
    p.add_argument("--out", help="output folder (default: streameval-<split> next to the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of a summary")
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (default 1)")
    args = p.parse_args(argv)
    from sctrain.streameval.stream import LAYOUT  # numpy only: --help and bad arguments stay quick

    if not args.minutes * 60 * min(shares[0] for shares in LAYOUT.values()) >= 3.0:
        p.error(f"--minutes {args.minutes:g} leaves no room for a word: use at least 0.1")
    if args.target_fa_per_hour < 0:
        p.error(f"--target-fa-per-hour must be >= 0, got {args.target_fa_per_hour:g}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


class InputError(Exception):
    """Input this command cannot use; the message is one line."""


def _check_paths(args: argparse.Namespace) -> None:
    if not Path(args.checkpoint).is_file():
        raise InputError(f"checkpoint not found: {args.checkpoint}")
    for flag, folder in (("--root", args.root), ("--noise", args.noise)):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{flag}: folder not found: {folder}")


def _streams(args: argparse.Namespace, model, progress: bool):
    """The test and validation streams, with what the JSON should say about them."""
    from sctrain.data.pack import load_dataset
    from sctrain.streameval.data import noise_files, split_stream

    cfg = model.config.data
    if args.root is not None:
        cfg = dataclasses.replace(cfg, root=str(args.root), download=False)
    data = load_dataset(cfg, progress=progress)
    if data.labels != model.labels:
        raise InputError(f"the dataset at {cfg.root} has labels {data.labels}, the checkpoint {model.labels}")
    root = Path(data.meta["root"])
    paths = noise_files(args.noise) if args.noise else [root / p for p in data.meta["background_files"]]
    if args.noise and not paths:
        raise InputError(f"--noise: no .wav/.flac/.ogg recordings in {args.noise}")
    streams = {split: split_stream(data, split, args.minutes, seed, paths)
               for split, seed in ((args.split, args.seed), ("validation", args.seed + 1))}
    return streams, {"root": str(root), "noise": [str(p) for p in paths]}


def _summary(evaluation, info: dict, paths: dict) -> str:
    lines = [f"{info['split']} stream: {info['duration_s'] / 60:.1f} min, {info['keywords_said']} keywords"]
    rows = [("default", evaluation.default)]
    if evaluation.calibrated is not None:
        rows.append(("calibrated", evaluation.calibrated))
    for name, s in rows:
        by = ", ".join(f"{k} {s.fa_per_hour(k):.2f}" for k in ("keywords", "noise", "unknown") if s.hours[k])
        lines.append(f"  {name:<10} hits {sum(s.hits.values())}, wrong {s.wrong_events}, misses "
                     f"{sum(s.misses.values())}, false alarms {s.fa_count()} ({s.fa_per_hour():.2f}/h; {by}), "
                     f"miss rate {100 * s.miss_rate():.1f} %")
    if evaluation.calibration is not None:
        thresholds = ", ".join(f"{k} {t:g}" for k, t in evaluation.calibration.thresholds.items())
        lines.append(f"  calibrated thresholds: {thresholds}")
    lines.append("  wrote " + ", ".join(str(p) for p in paths.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    import torch

    from sctrain.artifacts.files import CheckpointError
    from sctrain.audio.io import AudioError
    from sctrain.data.speechcommands import DatasetError
    from sctrain.inference.events import EventDecoder
    from sctrain.inference.loading import load_model
    from sctrain.inference.streaming import model_rules, model_thresholds
    from sctrain.streameval.evaluate import evaluate
    from sctrain.streameval.posteriors import stream_posteriors
    from sctrain.streameval.report import write_report

    torch.set_num_threads(args.threads)
    progress = not args.json
    try:
        _check_paths(args)
        model = load_model(args.checkpoint)
        streams, sources = _streams(args, model, progress)
        # What StreamingDetector does by default: 100 ms hop, the checkpoint's calibrated thresholds (0.5 for a
        # checkpoint without them) and the detector rules stored with them; calibration chooses under the same.
        rules = model_rules(model)
        decoder = EventDecoder(model.labels, model_thresholds(model), **rules.decoder_kwargs())
        runs = {split: [(stream_posteriors(model.cpu_classifier, s.wave, decoder.hop, progress=progress,
                                           desc=f"scoring {split} windows"), s)] for split, s in streams.items()}
        evaluation = evaluate(decoder, runs[args.split], runs["validation"], args.target_fa_per_hour)
        test = streams[args.split]
        info = {"checkpoint": str(args.checkpoint), "split": args.split, "seed": args.seed,
                "duration_s": test.duration_s, "sections": test.sections,
                "keywords_said": sum(evaluation.default.truths.values()), "detector": rules.to_dict(), **sources}
        out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"streameval-{args.split}"
        paths = write_report(evaluation, out, info)
    except (InputError, CheckpointError, DatasetError, AudioError, ValueError, OSError) as e:
        print(f"sctrain: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    print(paths["json"].read_text() if args.json else _summary(evaluation, info, paths))
    return 0

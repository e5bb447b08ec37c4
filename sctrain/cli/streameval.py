"""``python -m sctrain.streameval CKPT``: keyword spotting on long streams built from held-out splits.

The same detector pipeline as the end of training (:mod:`sctrain.streameval.pipeline`), with the checkpoint's
settings (those its thresholds were calibrated with, else its config's ``kws`` section) unless flags say
otherwise. The checkpoint's own data config locates (and packs, if needed) the dataset. The ``--split`` streams
(keywords every ~3 s over held-out noise, noise alone, other words, then keyword-free audio) are scored once, and
the detector's decisions are replayed: with the thresholds StreamingDetector uses by default, along a DET curve,
and with per-keyword thresholds calibrated on the validation streams; ``--store`` writes that calibration into the
checkpoint (atomically: a failure leaves the file as it was). Writes ``streameval.json``,
``streameval_det.png`` and ``streameval.md`` into ``--out``. Exit status 2, with one line on stderr, for input
that cannot be used.
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
    p.add_argument("--minutes", type=float, help="keyword stream of --split (default: the checkpoint's settings, 10)")
    p.add_argument("--negative-minutes", type=float,
                   help="keyword-free audio of --split (default: the checkpoint's test setting, 60)")
    p.add_argument("--validation-minutes", type=float, help="validation keyword stream (default: the checkpoint's)")
    p.add_argument("--validation-negative-minutes", type=float,
                   help="keyword-free validation audio calibration pools with it (default: the checkpoint's, 180)")
    p.add_argument("--negatives", nargs="+", metavar="PATH",
                   help="folders or files of audio without the keywords, never trained on, played after --split's "
                        "streams as other audio (folders named like a keyword are left out)")
    p.add_argument("--noise", help="folder of noise recordings (default: the dataset's _background_noise_)")
    p.add_argument("--target-fa-per-hour", type=float,
                   help="false alarms per hour per keyword that calibration aims at (default: the checkpoint's, 1)")
    p.add_argument("--seed", type=int, help="stream seed (default 0; the validation streams use seed+1)")
    p.add_argument("--store", action="store_true",
                   help="store the calibrated thresholds, rules and settings into the checkpoint")
    p.add_argument("--out", help="output folder (default: streameval-<split> next to the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of a summary")
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (default 1)")
    args = p.parse_args(argv)
    from sctrain.streameval.mixed_stream import LAYOUT  # numpy only: --help and bad arguments stay quick

    for flag in ("minutes", "validation_minutes"):
        value = getattr(args, flag)
        if value is not None and not value * 60 * min(shares[0] for shares in LAYOUT.values()) >= 3.0:
            p.error(f"--{flag.replace('_', '-')} {value:g} leaves no room for a word: use at least 0.1")
    for flag in ("negative_minutes", "validation_negative_minutes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag):g}")
    if args.target_fa_per_hour is not None and args.target_fa_per_hour < 0:
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


def settings_for(args: argparse.Namespace, model):
    """The checkpoint's stream settings (stored with its thresholds, else its config's), flags winning."""
    from sctrain.artifacts.detector import StreamSettings

    stored = (model.calibration or {}).get("settings")
    settings = StreamSettings.from_dict(stored) if stored else model.config.kws.settings(StreamSettings.test_minutes)
    flags = {"test_minutes": args.minutes, "test_negative_minutes": args.negative_minutes,
             "validation_minutes": args.validation_minutes, "negative_minutes": args.validation_negative_minutes,
             "target_fa_per_hour": args.target_fa_per_hour, "seed": args.seed}
    settings = dataclasses.replace(settings, **{k: v for k, v in flags.items() if v is not None})
    if not settings.test_minutes:
        settings = dataclasses.replace(settings, test_minutes=StreamSettings.test_minutes)
    return settings


def _dataset(args: argparse.Namespace, model, progress: bool):
    from sctrain.data.pack import load_dataset
    from sctrain.streameval.data import noise_files

    cfg = model.config.data
    if args.root is not None:
        cfg = dataclasses.replace(cfg, root=str(args.root), download=False)
    data = load_dataset(cfg, progress=progress)
    if data.labels != model.labels:
        raise InputError(f"the dataset at {cfg.root} has labels {data.labels}, the checkpoint {model.labels}")
    noise = noise_files(args.noise) if args.noise else None
    if args.noise and not noise:
        raise InputError(f"--noise: no .wav/.flac/.ogg recordings in {args.noise}")
    return data, noise


def _summary(evaluation, info: dict, paths: dict, stored: bool) -> str:
    from sctrain.streameval.bounds import describe

    lines = [f"{info['split']} streams: {info['duration_s'] / 60:.1f} min of keywords ({info['keywords_said']}) and "
             f"{info['audio']['negative_hours']:.2f} h keyword-free, none heard in training"]
    rows = [("default", evaluation.default)]
    if evaluation.calibrated is not None:
        rows.append(("calibrated", evaluation.calibrated))
    for name, s in rows:
        by = ", ".join(f"{k} {describe(s.fa_count(k), s.hours[k])}" for k in ("keywords", "noise", "unknown")
                       if s.hours[k])
        lines.append(f"  {name:<10} hits {sum(s.hits.values())}, wrong {s.wrong_events}, misses "
                     f"{sum(s.misses.values())}, false alarms {describe(s.fa_count(), s.total_hours)} ({by}), "
                     f"miss rate {100 * s.miss_rate():.1f} %")
    c = evaluation.calibration
    if c is not None:
        thresholds = ", ".join(f"{k} {t:g} (≤ {c.bounds[k]:.2f}/h)" for k, t in c.thresholds.items())
        lines.append(f"  calibrated thresholds on {c.hours:.2f} h of validation audio: {thresholds}"
                     + (f"; stored in {info['checkpoint']}" if stored else ""))
    lines.append("  wrote " + ", ".join(str(p) for p in paths.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    import torch

    from sctrain.artifacts.files import CheckpointError
    from sctrain.audio.io import AudioError
    from sctrain.data.negatives import NegativesError, negative_files
    from sctrain.data.speechcommands import DatasetError
    from sctrain.inference.loading import load_model
    from sctrain.inference.streaming import model_rules
    from sctrain.streameval.pipeline import DetectorPipeline
    from sctrain.streameval.report import info_for, write_report

    torch.set_num_threads(args.threads)
    progress = not args.json
    try:
        _check_paths(args)
        model = load_model(args.checkpoint)
        settings = settings_for(args, model)
        data, noise = _dataset(args, model, progress)
        # What StreamingDetector does by default: the checkpoint's thresholds (0.5 without) and rules.
        negatives = None
        if args.negatives:
            negatives = {args.split: negative_files(args.negatives, model.labels, "--negatives")}
        pipeline = DetectorPipeline(model, data, settings, model_rules(model), noise, progress, negatives)
        calibration = pipeline.calibrate()
        evaluation = pipeline.evaluate(args.split, calibration)
        info = info_for(str(args.checkpoint), args.split, settings.seed, pipeline, evaluation)
        out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"streameval-{args.split}"
        paths = write_report(evaluation, out, info)
        if args.store:
            pipeline.store(args.checkpoint, calibration)
    except (InputError, CheckpointError, DatasetError, NegativesError, AudioError, ValueError, OSError) as e:
        print(f"sctrain: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    print(paths["json"].read_text() if args.json else _summary(evaluation, info, paths, args.store))
    return 0

"""The study behind docs/streaming.md's "Training without non-keyword words": false alarms on words a model
never heard, with and without negatives made by time-reversing the keyword clips.

    PYTHONPATH=. python docs/streaming/heldout_words_study.py prepare DIR       # DIR/mini6, DIR/mini6neg
    python -m sctrain --config configs/kws.yaml data.root=DIR/mini6 data.keywords=down,go,left,no,right,stop \\
        output_dir=DIR/run_mini6 data.num_workers=0 train.epochs=15 train.batch_size=32 kws.test_minutes=0 ...
    PYTHONPATH=. python docs/streaming/heldout_words_study.py evaluate DIR/run_mini6/best_sc.pt OUT

``prepare`` links 6 of the mini set's 8 word folders (its lists cut to them) and, in ``mini6neg``, adds a
folder of the 6 words' training clips played backwards. With ``data.keywords`` naming the 6, that folder is
``_unknown_``. The folder's clips are in no list, so they are training clips. "up" and "yes" are in neither
set: ``evaluate`` builds three 20-minute test streams (seeds 0-2: keywords, noise alone, then words) whose
word stretch is every clip of those two words, which the models never trained on. It scores them with the
checkpoint's stored thresholds and rules, along a DET curve, and with thresholds calibrated under three
rule sets on a 10-minute validation stream (seed 1, as training does). It writes ``OUT/heldout_words.json``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

MINI = Path(__file__).resolve().parents[3] / "shared/data/speech_commands_mini"
KEYWORDS = ["down", "go", "left", "no", "right", "stop"]
HELD_OUT = ["up", "yes"]
LISTS = ("validation_list.txt", "testing_list.txt")
GRID = [round(float(x), 3) for x in np.r_[np.arange(0.02, 0.1, 0.02), np.arange(0.1, 0.991, 0.02)]]
RULE_SETS = {"first rules": {"smooth": 5, "refractory_s": 1.0, "filler_gate": False},
             "smooth 8 + refractory 1.5 s": {"smooth": 8, "refractory_s": 1.5, "filler_gate": False},
             "kept rules": {"smooth": 8, "refractory_s": 1.5, "filler_gate": True}}


def prepare(out: Path) -> None:
    listed = set()
    for name in LISTS:
        listed |= set((MINI / name).read_text().split())
    for name, reversed_negatives in (("mini6", False), ("mini6neg", True)):
        root = out / name
        root.mkdir(parents=True)
        for folder in [*KEYWORDS, "_background_noise_"]:
            os.symlink(MINI / folder, root / folder)
        for lst in LISTS:
            kept = [line for line in (MINI / lst).read_text().split() if line.split("/")[0] in KEYWORDS]
            (root / lst).write_text("\n".join(kept) + "\n")
        if reversed_negatives:
            (root / "reversed").mkdir()
            for word in KEYWORDS:
                for f in sorted((MINI / word).glob("*.wav")):
                    if f"{word}/{f.name}" not in listed:  # training clips only
                        audio, rate = sf.read(f, dtype="int16")
                        sf.write(root / "reversed" / f"{word}_{f.name}", audio[::-1], rate, subtype="PCM_16")


def evaluate(checkpoint: str, out: Path) -> None:
    from sctrain.audio.io import read_clip
    from sctrain.data.pack import load_dataset
    from sctrain.inference.events import EventDecoder
    from sctrain.inference.loading import load_model
    from sctrain.inference.streaming import model_rules, model_thresholds
    from sctrain.streameval.calibrate import calibrate
    from sctrain.streameval.data import noise_files, noise_recordings, split_clips, split_stream
    from sctrain.streameval.sweep import sweep_scores
    from sctrain.streameval.posteriors import stream_posteriors
    from sctrain.streameval.mixed_stream import LAYOUT, build_stream

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint)
    data = load_dataset(model.config.data, progress=False)
    keywords, _ = split_clips(data, "test")
    words = [(read_clip(f), "held-out") for w in HELD_OUT for f in sorted((MINI / w).glob("*.wav"))]
    noises = noise_recordings(noise_files(MINI / "_background_noise_"), "test")

    def cached(name, stream):
        path = out / f"{name}.npz"
        if not path.exists():
            np.savez_compressed(path, p=stream_posteriors(model.cpu_classifier, stream.wave, 1600, progress=False))
        return np.load(path)["p"], stream

    seconds = [20 * 60 * share for share in LAYOUT[True]]
    runs = [cached(f"heldout_{seed}", build_stream(keywords, noises, seconds[0], seconds[1], words, seconds[2],
                                                   seed=seed)) for seed in range(3)]
    validation = [cached("validation_1", split_stream(data, "validation", 10, 1))]

    def brief(score) -> dict:
        return {"found": round(1 - score.miss_rate(), 6),
                "fa_per_hour": {k: score.fa_per_hour(k) for k in ("keywords", "noise", "unknown")}}

    rules = model_rules(model)
    stored = EventDecoder(model.labels, model_thresholds(model), **rules.decoder_kwargs())
    det = [(t, s.miss_rate(), s.fa_per_hour("unknown")) for t, s in zip(GRID, sweep_scores(stored, runs, GRID))]
    result = {"checkpoint": checkpoint, "labels": model.labels, "hours": runs[0][1].hours(), "streams": len(runs),
              "stored": {"thresholds": model.thresholds, "rules": rules.to_dict(),
                         **brief(sweep_scores(stored, runs, [stored.thresholds])[0])},
              "det_unknown": det,
              "unknown_fa_per_hour_at_miss": {m: min([f for _, mm, f in det if mm <= m + 1e-12], default=None)
                                              for m in (0.2, 0.3, 0.4, 0.5)},
              "calibrated_on_10_min_validation": {}}
    for name, kwargs in RULE_SETS.items():
        decoder = EventDecoder(model.labels, **kwargs)
        cal = calibrate(decoder, validation, 1.0)
        result["calibrated_on_10_min_validation"][name] = {
            "thresholds": cal.thresholds, **brief(sweep_scores(decoder, runs, [cal.thresholds])[0])}
    (out / "heldout_words.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "det_unknown"}, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        prepare(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["evaluate"]:
        evaluate(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(__doc__)

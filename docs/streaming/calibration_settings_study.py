"""The study behind docs/streaming.md's "Calibration settings": validation stream length and a threshold floor.

    PYTHONPATH=. OMP_NUM_THREADS=1 python docs/streaming/calibration_settings_study.py CKPT OUT

Caches the posteriors of validation streams of 10, 30 and 60 minutes (seed 1, as training does) and of two
60-minute test streams (seeds 0 and 2) in OUT, then calibrates on each validation length for 1 false alarm
per hour per keyword under the default detector rules, with no floor and with floors 0.3 and 0.5 (the grid
cut at the floor: no threshold below it), and scores the test streams at those thresholds. Writes
``OUT/ana.json`` (docs/streaming/calibration_settings_*.json) and ``OUT/times.json``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sctrain.artifacts.detector import DetectorRules
from sctrain.data.pack import load_dataset
from sctrain.inference.events import EventDecoder
from sctrain.inference.loading import load_model
from sctrain.streameval.calibrate import calibrate
from sctrain.streameval.data import split_stream
from sctrain.streameval.sweep import DEFAULT_GRID, sweep_scores
from sctrain.streameval.posteriors import stream_posteriors

LENGTHS, TEST_SEEDS, FLOORS = (10, 30, 60), (0, 2), (0.0, 0.3, 0.5)


def main(ckpt: str, out: Path) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(ckpt)
    data = load_dataset(model.config.data, progress=False)
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}
    streams = {}
    for split, minutes, seed in [("validation", m, 1) for m in LENGTHS] + [("test", 60, s) for s in TEST_SEEDS]:
        path = out / f"{split}_{minutes}_{seed}.npz"
        t0 = time.time()
        stream = split_stream(data, split, minutes, seed)
        if not path.exists():
            t1 = time.time()
            np.savez_compressed(path, p=stream_posteriors(model.cpu_classifier, stream.wave, 1600, progress=False))
            times[path.stem] = {"build_s": t1 - t0, "posteriors_s": time.time() - t1}
        streams[path.stem] = [(np.load(path)["p"], stream)]
    (out / "times.json").write_text(json.dumps(times))
    decoder = EventDecoder(model.labels, **DetectorRules().decoder_kwargs())
    rows = []
    for minutes in LENGTHS:
        for floor in FLOORS:
            t0 = time.time()
            cal = calibrate(decoder, streams[f"validation_{minutes}_1"], 1.0,
                            grid=[t for t in DEFAULT_GRID if t >= floor])
            row = {"val_min": minutes, "floor": floor, "thresholds": cal.thresholds, "calibrate_s": time.time() - t0,
                   "posteriors_s": times[f"validation_{minutes}_1"]["posteriors_s"],
                   "val_fa": cal.validation.fa_per_hour()}
            for seed in TEST_SEEDS:
                sc = sweep_scores(decoder, streams[f"test_60_{seed}"], [cal.thresholds])[0]
                row[f"seed{seed}"] = {"found": 100 * (1 - sc.miss_rate()), "fa": sc.fa_per_hour(),
                                      "noise_fa": sc.fa_per_hour("noise"), "noise_h": sc.hours["noise"],
                                      "unk_fa": sc.fa_per_hour("unknown") if sc.hours.get("unknown") else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "ana.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

"""The study behind the detector rules (docs/streaming.md, "Detector rules"): DET curves of candidate rules on
validation and test streams of one checkpoint, from posteriors computed once per stream.

    PYTHONPATH=. python docs/streaming/rules_study.py CKPT OUT_DIR --name mini --levels 0.15,0.2,0.25,0.3

Streams: ``--seeds`` streams of ``--minutes`` per split (validation seeds 100.., test seeds 0..), built by
:func:`sctrain.streameval.data.split_stream` from the checkpoint's dataset; posteriors are cached in OUT_DIR.
Writes ``<name>_rules.json`` (every curve, the false alarms per hour at each miss rate of ``--levels`` on the
curve's lower envelope, and the test score with thresholds calibrated on the validation streams) and
``<name>_det.png``. The rules that were measured and dropped (a peak that must persist for K windows, a top-1
minus top-2 margin) exist only here, in :class:`StudyDecoder`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sctrain.data.pack import load_dataset
from sctrain.inference.events import EventDecoder
from sctrain.inference.loading import load_model
from sctrain.streameval.calibrate import calibrate
from sctrain.streameval.data import split_stream
from sctrain.streameval.sweep import det_curve, sweep_scores
from sctrain.streameval.posteriors import stream_posteriors

GRID = [round(float(x), 3) for x in np.r_[np.arange(0.02, 0.1, 0.02), np.arange(0.1, 0.991, 0.02)]]
FIRST = {"smooth": 5, "refractory_s": 1.0, "filler_gate": False}  # the detector's first rules
CANDIDATES = {
    "first rules (smooth 5, refractory 1 s)": {},
    "smooth 3": {"smooth": 3}, "smooth 8": {"smooth": 8}, "smooth 10": {"smooth": 10}, "smooth 12": {"smooth": 12},
    "refractory 1.5 s": {"refractory_s": 1.5}, "refractory 2 s": {"refractory_s": 2.0},
    "filler gate": {"filler_gate": True},
    "persist 3": {"persist": 3}, "persist 5": {"persist": 5},
    "margin 0.2": {"margin": 0.2},
    "smooth 8 + refractory 1.5 s": {"smooth": 8, "refractory_s": 1.5},
    "smooth 8 + refractory 1.5 s + persist 3": {"smooth": 8, "refractory_s": 1.5, "persist": 3},
    "smooth 8 + refractory 1.5 s + margin 0.2": {"smooth": 8, "refractory_s": 1.5, "margin": 0.2},
    "kept: smooth 8 + refractory 1.5 s + filler gate": {"smooth": 8, "refractory_s": 1.5, "filler_gate": True},
}
PLOTTED = ("first rules (smooth 5, refractory 1 s)", "smooth 8", "refractory 1.5 s", "filler gate", "persist 3",
           "margin 0.2", "kept: smooth 8 + refractory 1.5 s + filler gate")


class StudyDecoder(EventDecoder):
    """EventDecoder plus the two rules that were dropped, in its whole-stream replay only."""

    def __init__(self, labels, persist: int = 1, margin: float = 0.0, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.persist, self.margin = persist, margin

    def _replay(self, smoothed, times, thresholds):
        self.reset()
        eligible = smoothed >= thresholds
        if self._gate is not None:
            eligible &= smoothed > smoothed[:, self._gate].max(1, keepdims=True)
        if self.margin > 0:  # the keyword is the top label by at least `margin`
            top2 = np.sort(smoothed, 1)[:, -2:]
            eligible &= (smoothed >= top2[:, 1:]) & (top2[:, 1:] - top2[:, :1] >= self.margin)
        if self.persist > 1:  # over its threshold for `persist` windows in a row
            run = eligible.copy()
            for k in range(1, self.persist):
                run[k:] &= eligible[:-k]
            run[: self.persist - 1] = False
            eligible = run
        masked = np.where(eligible, smoothed, -np.inf)
        best = np.where(eligible.any(1), masked.argmax(1), -1)
        score = np.take_along_axis(smoothed, np.maximum(best, 0)[:, None], 1)[:, 0]
        events = []
        for b, s, t in zip(best.tolist(), score.tolist(), times.tolist()):
            if b >= 0 or self._pending is not None:
                events += self._decide(b, s, t)
        events += self.flush()
        self.reset()
        return events


def runs_of(model, out: Path, minutes: float, seeds: int) -> dict:
    data = load_dataset(model.config.data, progress=False)
    runs = {}
    for split, base in (("validation", 100), ("test", 0)):
        runs[split] = []
        for seed in range(base, base + seeds):
            stream = split_stream(data, split, minutes, seed)
            cache = out / f"{split}_{seed}.npz"
            if not cache.exists():
                np.savez_compressed(cache, p=stream_posteriors(model.cpu_classifier, stream.wave, 1600, progress=False))
            runs[split].append((np.load(cache)["p"], stream))
    return runs


def lower_envelope(points, miss: float):
    """The fewest false alarms per hour of any point at or under ``miss`` (None: no point gets there)."""
    fa = [f for m, f in points if m <= miss + 1e-12]
    return min(fa) if fa else None


def study(model, runs: dict, levels) -> dict:
    out = {}
    for name, rules in CANDIDATES.items():
        decoder = StudyDecoder(model.labels, **{**FIRST, **rules})
        row = {"rules": {**FIRST, **rules}}
        for split in ("validation", "test"):
            det = det_curve(decoder, runs[split], GRID)
            pts = [(d.miss_rate, d.fa_per_hour) for d in det]
            row[split] = {"det": [[d.threshold, round(d.miss_rate, 6), d.fa_per_hour] for d in det],
                          "fa_per_hour_at_miss": {str(m): lower_envelope(pts, m) for m in levels}}
        cal = calibrate(decoder, runs["validation"], 1.0)  # on calibration's own grid, as training does
        test = sweep_scores(decoder, runs["test"], [cal.thresholds])[0]
        row["calibrated_1fa"] = {
            "thresholds": cal.thresholds, "validation_miss_rate": cal.validation.miss_rate(),
            "validation_fa_per_hour": cal.validation.fa_per_hour(), "test_miss_rate": test.miss_rate(),
            "test_fa_per_hour": test.fa_per_hour(),
            "test_fa_per_hour_by_section": {k: test.fa_per_hour(k) for k in ("keywords", "noise", "unknown")
                                            if test.hours[k]}}
        out[name] = row
    return out


def plot(results: dict, title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=100, layout="constrained")
    for i, split in enumerate(("validation", "test")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in PLOTTED:
            det = results[name][split]["det"]
            style = {"lw": 2.2, "color": "k"} if name.startswith("kept") else {"lw": 1.0}
            ax.plot([max(f, 0.5) for _, _, f in det], [100 * m for _, m, _ in det], ".-", ms=3, label=name, **style)
        ax.set_xscale("log")
        ax.set_xlabel("false alarms per hour (0 drawn at 0.5)")
        ax.set_ylabel("miss rate (%)")
        ax.set_title(f"{title}: {split} streams")
        ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--name", required=True)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--levels", default="0.15,0.2,0.25,0.3")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.checkpoint)
    runs = runs_of(model, out, args.minutes, args.seeds)
    levels = [float(x) for x in args.levels.split(",")]
    results = study(model, runs, levels)
    hours = {s: sum(st.duration_s for _, st in runs[s]) / 3600 for s in runs}
    sections = {s: {k: sum(st.hours()[k] for _, st in runs[s]) for k in ("keywords", "noise", "unknown")} for s in runs}
    doc = {"checkpoint": str(args.checkpoint), "labels": model.labels, "hours": hours, "section_hours": sections,
           "minutes": args.minutes, "seeds": args.seeds, "grid": GRID, "results": results}
    (out / f"{args.name}_rules.json").write_text(json.dumps(doc, indent=1))
    plot(results, args.name, out / f"{args.name}_det.png")
    for name, row in results.items():
        fmt = lambda s: [None if v is None else round(v, 1) for v in row[s]["fa_per_hour_at_miss"].values()]  # noqa: E731
        c = row["calibrated_1fa"]
        print(f"{name:50s} val {fmt('validation')} test {fmt('test')} | calibrated: test miss "
              f"{100 * c['test_miss_rate']:.1f} % fa/h {c['test_fa_per_hour']:.1f} {c['test_fa_per_hour_by_section']}")


if __name__ == "__main__":
    main()

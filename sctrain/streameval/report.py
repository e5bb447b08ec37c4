"""An evaluation as files: ``streameval.json``, the DET curve ``streameval_det.png`` and ``streameval.md``."""
from __future__ import annotations

import json
from pathlib import Path

from sctrain.streameval.evaluate import Evaluation
from sctrain.streameval.mixed_stream import SECTIONS
from sctrain.streameval.scoring import Score
from sctrain.utils import atomic_write

FILES = {"json": "streameval.json", "png": "streameval_det.png", "md": "streameval.md"}
SECTION_NAMES = {"keywords": "between keywords", "noise": "noise alone", "unknown": "non-keyword speech"}


def plot_det(evaluation: Evaluation, path) -> None:
    """The DET curve as a PNG at ``path`` (a path or a binary file)."""
    from matplotlib.figure import Figure  # its own Agg canvas: no pyplot, no display

    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    points = sorted(evaluation.det, key=lambda p: p.threshold)
    for k in points[0].per_keyword if points else ():
        if evaluation.default.truths[k]:  # keywords never said have no miss rate to draw
            ax.plot([p.per_keyword[k][1] for p in points], [100 * p.per_keyword[k][0] for p in points],
                    lw=0.8, alpha=0.45, label=k)
    ax.plot([p.fa_per_hour for p in points], [100 * p.miss_rate for p in points], "k.-", lw=2, label="all keywords")
    marks = [("default thresholds", evaluation.default, "o")]
    if evaluation.calibrated is not None:
        marks.append((f"calibrated ({evaluation.calibration.target_fa_per_hour:g}/h per keyword)",
                      evaluation.calibrated, "*"))
    for name, score, marker in marks:
        ax.plot([score.fa_per_hour()], [100 * score.miss_rate()], marker, ms=11, mfc="none", mew=2, label=name)
    ax.set_xscale("symlog", linthresh=1.0)  # zero false alarms is a common, meaningful value
    ax.set_xlabel("false alarms per hour")
    ax.set_ylabel("miss rate (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Keyword spotting on streams: DET curve")
    fig.savefig(path, format="png")


def _row(name: str, s: Score) -> str:
    by = " / ".join(f"{s.fa_per_hour(k):.2f} (≤ {s.fa_bound(k):.2f}, {s.hours[k]:.2f} h)" if s.hours[k] else "-"
                    for k in SECTIONS)
    return (f"| {name} | {sum(s.hits.values())}/{sum(s.truths.values())} | {s.wrong_events} | "
            f"{sum(s.misses.values())} | {s.fa_count()} in {s.total_hours:.2f} h | {s.fa_per_hour():.2f} "
            f"(≤ {s.fa_bound():.2f}) | {by} | {100 * s.miss_rate():.1f} % |")


def info_for(checkpoint: str, split: str, seed: int, pipeline, evaluation: Evaluation) -> dict:
    """What a report says about the streams a :class:`~sctrain.streameval.pipeline.DetectorPipeline` scored."""
    keyword_stream = pipeline.runs(split)[0][1]
    return {"checkpoint": checkpoint, "split": split, "seed": seed, "duration_s": keyword_stream.duration_s,
            "detector": pipeline.rules.to_dict(), "settings": pipeline.settings.to_dict(),
            "sections": keyword_stream.sections, "keywords_said": sum(evaluation.default.truths.values()),
            "audio": pipeline.audio(split), "root": str(pipeline.data.meta["root"]),
            "noise": [str(p) for p in pipeline.noise]}


def markdown(evaluation: Evaluation, info: dict) -> str:
    lines = ["## Keyword spotting on streams", "",
             (f"Checkpoint `{info.get('checkpoint', '?')}`, {info.get('split', '?')} split: "
              f"{info.get('duration_s', 0) / 60:.1f} min keyword stream and "
              f"{info.get('audio', {}).get('negative_hours', 0.0):.2f} h of keyword-free audio, seed "
              f"{info.get('seed', '?')}, events within {evaluation.tolerance_s:g} s of a word. "
              + ("The model trained on none of this audio (held-out speakers, the split's own stretch of the noise "
                 "recordings, noise and babble generated from them)."
                 if info.get("audio", {}).get("heard_in_training") is False else
                 "Which audio the model trained on is not recorded for these streams.")
              + "".join(f" Of the same kind in training: {kind}." for kind in info.get("audio", {})
                        .get("same_kind_in_training", []))), "",
             "Every rate is false alarms per hour with its 95 % upper bound (≤) and the hours behind it.", "",
             "| thresholds | hits | wrong labels | misses | false alarms | FA/h | FA/h "
             + " / ".join(SECTION_NAMES[k] for k in SECTIONS) + " | miss rate |",
             "|---|---|---|---|---|---|---|---|", _row("default", evaluation.default)]
    if evaluation.calibrated is not None:
        c = evaluation.calibration
        lines.append(_row(f"calibrated ({c.target_fa_per_hour:g}/h per keyword)", evaluation.calibrated))
        lines += ["", f"Calibrated thresholds (validation streams, {c.hours:.2f} h; 95 % bound of each keyword FA/h): "
                  + ", ".join(f"{k} {t:g} (≤ {c.bounds.get(k, float('nan')):.2f}/h"
                              f"{'' if c.met[k] else ', target not shown'})" for k, t in c.thresholds.items())
                  + "."]
    lines += ["", f"![DET curve]({FILES['png']})", ""]
    return "\n".join(lines)


def write_report(evaluation: Evaluation, out_dir: str | Path, info: dict) -> dict[str, Path]:
    """Write the three files into ``out_dir`` (each atomically); returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in FILES.items()}
    document = json.dumps({**info, **evaluation.to_dict()}, indent=1).encode()
    atomic_write(paths["json"], lambda f: f.write(document))
    atomic_write(paths["md"], lambda f: f.write(markdown(evaluation, info).encode()))
    atomic_write(paths["png"], lambda f: plot_det(evaluation, f))
    return paths

"""DET curves of several checkpoints on the same held-out streams, from their ``streameval.json`` files.

    PYTHONPATH=. python docs/streaming/heldout_8w/compare.py OUT.png NAME=streameval.json [NAME=streameval.json ...]

Prints, per file, the miss rate at 1 and 10 false alarms per hour (the lowest on the curve at or under that rate,
one threshold for every keyword) and the stored thresholds' point, with the hours behind each rate.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def miss_at(det: list[dict], fa_per_hour: float) -> float | None:
    rates = [p["miss_rate"] for p in det if p["fa_per_hour"] <= fa_per_hour]
    return min(rates) if rates else None


def main(argv: list[str]) -> None:
    from matplotlib.figure import Figure

    out, named = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, path in named:
        doc = json.loads(Path(path).read_text())
        det = sorted(doc["det"], key=lambda p: p["threshold"])
        stored = doc["default"]
        ax.plot([p["fa_per_hour"] for p in det], [100 * p["miss_rate"] for p in det], ".-", label=name)
        ax.plot([stored["fa_per_hour"]], [100 * stored["miss_rate"]], "o", mfc="none", ms=10,
                color=ax.lines[-1].get_color())
        at1, at10 = (("-" if m is None else f"{100 * m:.1f} %") for m in (miss_at(det, 1.0), miss_at(det, 10.0)))
        print(f"{name}: {doc['keywords_said']} keywords, {stored['hours']:.2f} h; miss at 1 FA/h {at1}, "
              f"at 10 FA/h {at10}; "
              f"stored thresholds: miss {100 * stored['miss_rate']:.1f} %, {stored['fa_per_hour']:.2f} FA/h "
              f"(bound {stored['fa_per_hour_bound']:.2f}), by section {stored['fa_per_hour_by_section']} "
              f"over {stored['hours_by_section']} h")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("false alarms per hour (one threshold for every keyword)")
    ax.set_ylabel("miss rate (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Held-out test streams, 8-word set (circles: stored thresholds)")
    fig.savefig(out, format="png")


if __name__ == "__main__":
    main(sys.argv[1:])

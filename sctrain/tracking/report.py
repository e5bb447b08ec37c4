"""The local run report: PNG plots and ``report.md`` from ``metrics.jsonl`` (+ ``results.json``), no account needed.

    python -m sctrain.report OUTPUT_DIR

Writes ``loss.png``, ``accuracy.png``, ``confusion_matrix.png``, ``per_class_accuracy.png`` and ``report.md``
into the run folder. Needs matplotlib (the ``report`` extra); it draws on matplotlib's Agg canvas directly,
so it never opens a window or changes the pyplot backend of the calling process.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sctrain.utils import first_line

log = logging.getLogger(__name__)

DPI = 100
PLOTS = {"loss": "loss.png", "accuracy": "accuracy.png", "confusion": "confusion_matrix.png",
         "per_class": "per_class_accuracy.png"}
ANNOTATE_MAX_LABELS = 16  # write the counts into the confusion-matrix cells up to this many classes


class ReportError(ValueError):
    """A run folder the report cannot be made from; the message is one line and names the file."""


class MatplotlibMissing(ImportError):
    """The ``report`` extra (matplotlib) is not installed."""


@dataclass
class RunMetrics:
    train: list[dict] = field(default_factory=list)
    evals: dict[str, list[dict]] = field(default_factory=dict)  # split -> records in step order
    results: Optional[dict] = None


def _append_superseding(kept: list[dict], record: dict) -> None:
    """Append ``record``; a step at or below earlier ones means a restart re-logged them: the new ones win."""
    while kept and kept[-1].get("step", 0) >= record.get("step", 0):
        kept.pop()
    kept.append(record)


def read_metrics(output_dir: str | Path) -> RunMetrics:
    """The run's records, with steps that a resumed run logged again kept once (the later copy)."""
    folder = Path(output_dir)
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"no metrics.jsonl in {folder} (is it a run's output_dir?)")
    metrics, bad = RunMetrics(), []
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")  # a binary file: its lines are just bad
    except OSError as e:
        raise ReportError(f"cannot read {path} ({e.strerror})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)  # e.g. a line cut short when the process was killed mid-write
            continue
        if not _usable(record):  # valid JSON, but not a record the plots can draw
            bad.append(number)
            continue
        kind = record.get("kind")
        if kind == "train":
            _append_superseding(metrics.train, record)
        elif kind == "eval":
            _append_superseding(metrics.evals.setdefault(record.get("split", "validation"), []), record)
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (first: line %d)", path, len(bad), bad[0])
    if not metrics.train and not metrics.evals:
        garbage = f" (none of its {len(bad)} lines is a metrics record: is it a run's metrics.jsonl?)" if bad else ""
        raise ReportError(f"{path} holds no training or evaluation records{garbage or ' yet'}")
    results_path = folder / "results.json"
    if results_path.is_file():
        try:
            metrics.results = json.loads(results_path.read_bytes())
        except json.JSONDecodeError as e:
            raise ReportError(f"{results_path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        except (UnicodeDecodeError, OSError) as e:
            raise ReportError(f"{results_path} cannot be read as JSON ({first_line(e)})") from None
        if not isinstance(metrics.results, dict):
            raise ReportError(f"{results_path} holds a {type(metrics.results).__name__}, not a run's results")
    return metrics


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _usable(record) -> bool:
    """A record with the fields (and types) the plots read: what tracker.Tracker writes."""
    if not isinstance(record, dict) or "kind" not in record:
        return False
    if record["kind"] not in ("train", "eval"):  # results, and kinds added later: not plotted
        return True
    if not isinstance(record.get("step"), int) or not _number(record.get("loss")) or not _number(record.get("lr")):
        return False
    if record["kind"] == "train":
        return True
    labels, confusion = record.get("labels"), record.get("confusion")
    return (isinstance(record.get("acc"), (int, float)) and isinstance(record.get("per_class_acc"), dict)
            and isinstance(labels, list) and all(isinstance(label, str) for label in labels)
            and isinstance(confusion, list) and len(confusion) == len(labels)
            and all(isinstance(row, list) and len(row) == len(labels) and all(isinstance(n, int) for n in row)
                    for row in confusion)
            and all(_number(v) for v in record["per_class_acc"].values())
            and isinstance(record.get("epoch", 0), int) and isinstance(record.get("split", ""), str))


def figure_inches(name: str, num_labels: int) -> tuple[float, float]:
    """Figure size of each plot; the two per-class plots grow with the number of labels."""
    if name == "confusion":
        side = min(22.0, max(6.0, 2.5 + 0.32 * num_labels))
        return side + 1.0, side  # +1 inch for the colour bar
    if name == "per_class":
        return 8.0, min(24.0, max(3.0, 1.2 + 0.28 * num_labels))
    return 8.0, 4.5


def figure_pixels(name: str, num_labels: int) -> tuple[int, int]:
    width, height = figure_inches(name, num_labels)
    return int(round(width * DPI)), int(round(height * DPI))


def _figure(name: str, num_labels: int = 0):
    from matplotlib.figure import Figure  # Figure() draws on its own Agg canvas: no pyplot, no display

    return Figure(figsize=figure_inches(name, num_labels), dpi=DPI, layout="constrained")


def _final_eval(metrics: RunMetrics) -> Optional[dict]:
    """The test evaluation when there is one, else the last validation."""
    for split in ("test", "validation"):
        if metrics.evals.get(split):
            return metrics.evals[split][-1]
    return None


def plot_loss(metrics: RunMetrics, path: Path) -> None:
    fig = _figure("loss")
    ax = fig.add_subplot()
    if metrics.train:
        ax.plot([r["step"] for r in metrics.train], [r.get("loss") for r in metrics.train], label="train loss",
                color="tab:blue", linewidth=1.2)
    val = metrics.evals.get("validation", [])
    if val:
        ax.plot([r["step"] for r in val], [r.get("loss") for r in val], "o-", label="validation loss",
                color="tab:orange")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if metrics.train and any(r.get("lr") for r in metrics.train):
        lr_ax = ax.twinx()  # the schedule explains most bends in the loss curve
        lr_ax.plot([r["step"] for r in metrics.train], [r.get("lr") for r in metrics.train], color="tab:gray",
                   linewidth=0.8, linestyle="--")
        lr_ax.set_ylabel("learning rate (dashed)", color="tab:gray")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.savefig(path)


def plot_accuracy(metrics: RunMetrics, path: Path) -> None:
    fig = _figure("accuracy")
    ax = fig.add_subplot()
    val = metrics.evals.get("validation", [])
    if val:
        ax.plot([r["step"] for r in val], [r.get("acc") for r in val], "o-", label="validation accuracy",
                color="tab:orange")
        best = max(val, key=lambda r: r.get("acc") or 0.0)
        ax.annotate(f"best {best['acc']:.3f} (epoch {best.get('epoch', 0) + 1})", (best["step"], best["acc"]),
                    textcoords="offset points", xytext=(0, 9), ha="center", fontsize=9)
    test = metrics.evals.get("test", [])
    if test:
        ax.axhline(test[-1]["acc"], color="tab:green", linestyle="--", label=f"test accuracy {test[-1]['acc']:.3f}")
    ax.set(xlabel="optimizer step", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path)


def plot_confusion(record: dict, path: Path) -> None:
    labels, counts = record["labels"], np.asarray(record["confusion"], dtype=np.int64)
    n = len(labels)
    # Row-normalised colours (recall per true class) stay readable when the classes differ in size.
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure("confusion", n)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8 if n > ANNOTATE_MAX_LABELS else 10)
    ax.set_yticks(range(n), labels, fontsize=8 if n > ANNOTATE_MAX_LABELS else 10)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"Confusion matrix ({record.get('split', '?')}, {int(counts.sum())} clips, "
                 f"accuracy {record.get('acc', 0):.3f})")
    if n <= ANNOTATE_MAX_LABELS:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.savefig(path)


def plot_per_class(metrics: RunMetrics, path: Path) -> None:
    final = _final_eval(metrics)
    labels = final["labels"]
    fig = _figure("per_class", len(labels))
    ax = fig.add_subplot()
    rows = np.arange(len(labels))
    val = metrics.evals.get("validation", [])
    shown = []
    if metrics.evals.get("test"):
        acc = metrics.evals["test"][-1]["per_class_acc"]
        ax.barh(rows, [acc.get(k) or 0.0 for k in labels], color="tab:green", alpha=0.8, label="test")
        shown.append("test")
    if val:
        acc = val[-1]["per_class_acc"]
        ax.plot([acc.get(k) or 0.0 for k in labels], rows, "D", color="tab:orange", markersize=5,
                label=f"validation (epoch {val[-1].get('epoch', 0) + 1})")
        shown.append("validation")
    ax.set_yticks(rows, labels, fontsize=8 if len(labels) > ANNOTATE_MAX_LABELS else 10)
    ax.invert_yaxis()  # first label on top, as in the confusion matrix
    ax.set(xlim=(0, 1.0), xlabel="accuracy (recall of the class)", title="Per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)


def _fmt(value, spec: str = ".4f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _markdown(folder: Path, metrics: RunMetrics, written: dict[str, str]) -> str:
    res = metrics.results or {}
    val = metrics.evals.get("validation", [])
    final = _final_eval(metrics)
    best = max(val, key=lambda r: r.get("acc") or 0.0) if val else {}
    test_count = f" ({res['test_count']} clips)" if res.get("test_count") else ""
    best_text = f"{_fmt(best.get('acc'))} (epoch {best.get('epoch', -1) + 1})" if best else "n/a"
    rows = [("test accuracy", _fmt(res.get("test_acc")) + test_count),
            ("best validation accuracy", best_text),
            ("steps", str(res.get("steps") or (metrics.train[-1]["step"] if metrics.train else "n/a"))),
            ("parameters", f"{res['params']:,}" if res.get("params") else "n/a"),
            ("training throughput", _fmt(res.get("train_clips_per_s"), ".0f", " clips/s")),
            ("CPU latency, batch 1", f"p50 {_fmt(res.get('latency_ms_p50'), '.2f')} ms, "
                                     f"p95 {_fmt(res.get('latency_ms_p95'), '.2f')} ms"),
            ("precision / processes / device", f"{res.get('precision', 'n/a')} / {res.get('world_size', 'n/a')} / "
                                               f"{res.get('device', 'n/a')}")]
    lines = [f"# Run report: {folder.resolve().name}", ""]
    if not metrics.results:
        lines += ["No `results.json` yet: the run has not finished; numbers are from `metrics.jsonl` so far.", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    if final:
        per_class = {k: v for k, v in final["per_class_acc"].items() if v is not None}
        worst = sorted(per_class, key=per_class.get)[:3]
        hardest = ", ".join(f"{k} {per_class[k]:.3f}" for k in worst)
        lines += [f"Hardest classes ({final.get('split')}): {hardest}", ""]
    titles = {"loss": "Loss", "accuracy": "Accuracy", "confusion": "Confusion matrix",
              "per_class": "Per-class accuracy"}
    for key, name in written.items():
        lines += [f"## {titles[key]}", "", f"![{titles[key]}]({name})", ""]
    return "\n".join(lines)


def write_report(output_dir: str | Path) -> list[Path]:
    """Draw every plot and write report.md; returns the files written. Raises ReportError or MatplotlibMissing."""
    folder = Path(output_dir)
    try:  # fail first, before reading or writing anything, when the extra is missing
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise MatplotlibMissing("matplotlib is not installed (pip install 'sctrain[report]')") from None
    metrics = read_metrics(folder)

    written: dict[str, str] = {}
    if metrics.train or metrics.evals.get("validation"):
        plot_loss(metrics, folder / PLOTS["loss"])
        written["loss"] = PLOTS["loss"]
    if metrics.evals:
        plot_accuracy(metrics, folder / PLOTS["accuracy"])
        plot_confusion(_final_eval(metrics), folder / PLOTS["confusion"])
        plot_per_class(metrics, folder / PLOTS["per_class"])
        written.update({k: PLOTS[k] for k in ("accuracy", "confusion", "per_class")})
    (folder / "report.md").write_text(_markdown(folder, metrics, written))
    return [folder / name for name in written.values()] + [folder / "report.md"]


def write_report_or_skip(output_dir: str | Path) -> Optional[list[Path]]:
    """End-of-training hook: the report is a convenience, so a problem is one log line, never a failed run."""
    try:
        paths = write_report(output_dir)
    except MatplotlibMissing as e:
        log.info("report skipped: %s", e)
        return None
    except ReportError as e:
        log.warning("report skipped: %s", e)
        return None
    log.info("report: %s", Path(output_dir) / "report.md")
    return paths

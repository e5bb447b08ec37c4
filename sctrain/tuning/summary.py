"""``study.json`` and ``study.md``: every trial of a study as its storage holds it, rewritten after each trial."""
from __future__ import annotations

from typing import Any

from sctrain.utils import atomic_write_text, json_text


def trial_row(trial: Any) -> dict:
    state = trial.state.name.lower()
    steps = trial.intermediate_values
    # A pruned trial has no final value: its best epoch's validation accuracy stands in.
    val = trial.value if trial.value is not None else (max(steps.values()) if steps else None)
    wall = trial.user_attrs.get("wall_s")
    if wall is None and trial.datetime_start and trial.datetime_complete:
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return {"number": trial.number, "state": state, "pruned": state == "pruned",
            "cut_by_budget": bool(trial.user_attrs.get("cut_by_budget", False)), "params": dict(trial.params),
            "val_acc": val, "test_acc": trial.user_attrs.get("test_acc"), "wall_s": wall,
            "epochs_run": trial.user_attrs.get("epochs_run"), "run_dir": trial.user_attrs.get("run_dir"),
            "retry_of": trial.user_attrs.get("retry_of")}


def summarize(study: Any, spec: Any) -> dict:
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["val_acc"], default=None)
    return {"study": spec.name, "storage": spec.storage_url, "study_dir": str(spec.study_dir),
            "config": spec.config, "overrides": list(spec.overrides), "space": spec.raw_space,
            "objective": "validation accuracy of each trial's best_sc.pt (maximised); test accuracy is only recorded",
            "best": best, "trials": rows}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(summary: dict) -> str:
    keys = list(summary["space"])
    lines = [f"# Study `{summary['study']}`", "",
             f"Config `{summary['config']}` {' '.join(summary['overrides'])}; storage `{summary['storage']}`.",
             "Trials are chosen on validation accuracy; the test accuracy is the finished trials' report only.", ""]
    best = summary["best"]
    if best is not None:
        lines += [f"Best: trial {best['number']}, val acc {_cell(best['val_acc'])}, in `{best['run_dir']}`.", ""]
    lines += ["| trial | state | val acc | test acc | wall s | epochs | " + " | ".join(f"`{k}`" for k in keys) + " |",
              "| ---: | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(keys)]
    for r in summary["trials"]:
        state = r["state"] + (" (budget cut)" if r["cut_by_budget"] else "")
        state += f" (retry of {r['retry_of']})" if r["retry_of"] is not None else ""
        cells = [r["number"], state, r["val_acc"], r["test_acc"], r["wall_s"], r["epochs_run"],
                 *(r["params"].get(k) for k in keys)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(study: Any, spec: Any) -> dict:
    summary = summarize(study, spec)
    atomic_write_text(spec.study_dir / "study.json", json_text(summary, indent=2))
    atomic_write_text(spec.study_dir / "study.md", markdown(summary))
    return summary

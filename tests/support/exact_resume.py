"""The config of the resume and fault tests' runs, and the check that an interrupted run ends bitwise where an
uninterrupted one does."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sctrain.artifacts.best import load_best
from sctrain.training.checkpoint.files import list_states, load_state

# 96 training clips: 6 steps per epoch (1 process x 16 or 2 processes x 8 clips), a state every 2 steps.
COMMON = ["--config", "configs/debug.yaml", "train.epochs=2", "model.kwsnet.width=8", "data.num_workers=0",
          "latency.enabled=false", "tracking.report=false", "train.checkpoint_every=2", "train.keep_last=3",
          "train.log_every=2", "train.eval_batch_size=64"]


def sctrain_args(root: Path, out: Path, procs: int) -> list[str]:
    return [*COMMON, f"data.root={root}", f"output_dir={out}", f"train.batch_size={16 // procs}"]


def metric_history(out: Path) -> list[tuple]:
    """Kind, step and split of every metrics.jsonl record, and the evaluations' loss (a train record's loss
    averages the steps since the last record, which after a restart begin at the resumed step)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r.get("step"), r.get("split"), r.get("loss") if r["kind"] == "eval" else None)
            for r in records]


def assert_same_weights(out: Path, reference: Path) -> None:
    best, ref_best = load_best(out / "best_sc.pt"), load_best(reference / "best_sc.pt")
    assert best["metrics"] == ref_best["metrics"]
    assert best["model"].keys() == ref_best["model"].keys()
    for key, tensor in ref_best["model"].items():
        assert torch.equal(best["model"][key], tensor), f"best_sc.pt: {key} differs"
    last, ref_last = list_states(out)[0], list_states(reference)[0]
    assert last.name == ref_last.name
    state, ref_state = load_state(last), load_state(ref_last)
    assert state["progress"] == ref_state["progress"]
    for key, tensor in ref_state["model"].items():
        assert torch.equal(state["model"][key], tensor), f"{last.name}: {key} differs"
    assert ("ema" in state) == ("ema" in ref_state)
    if "ema" in ref_state:  # train.ema_decay: the average and its update count continue where they stopped
        assert state["ema"]["n_averaged"] == ref_state["ema"]["n_averaged"]
        for key, tensor in ref_state["ema"]["weights"].items():
            assert torch.equal(state["ema"]["weights"][key], tensor), f"{last.name}: ema {key} differs"
    for (i, a), b in zip(ref_state["optimizer"]["state"].items(), state["optimizer"]["state"].values()):
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), f"optimizer state {i}.{name}"
    for a, b in zip(ref_state["rng"], state["rng"]):
        assert torch.equal(a["torch"], b["torch"])
    # One history in metrics.jsonl, as the uninterrupted run's: no steps repeated after a kill.
    assert metric_history(out) == metric_history(reference)
    results, ref_results = (json.loads((d / "results.json").read_text()) for d in (out, reference))
    assert (results["val_acc"], results["test_acc"]) == (ref_results["val_acc"], ref_results["test_acc"])
    assert not list((out / "state").glob(".tmp-*")) and not list((out / "state").glob(".old-*"))

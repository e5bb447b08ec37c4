"""W&B tracking: real offline runs of the CLI, read back from wandb's own run files (protobuf records).

One run is preempted (SIGTERM, as Slurm does before requeueing) and resumed to the end: the two offline run
folders must hold one W&B run id, steps that only go up, the config, the per-step and per-epoch keys, the
confusion-matrix table (equal to metrics.jsonl's counts), examples and the model artifact.
"""
from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from support import REPO

from sctrain.tracking.report import figure_pixels, read_metrics
from sctrain.tracking.tracker import last_logged_step
from sctrain.training.checkpoint.files import load_latest_state
from sctrain.training.stopping import EXIT_PREEMPTED

EPOCHS, STEPS_PER_EPOCH, EXAMPLES = 3, 6, 3  # synthetic_root: 96 training clips, batch 16
TINY = ["--config", "configs/debug.yaml", "model.kwsnet.width=8", "train.batch_size=16", "train.eval_batch_size=64",
        "data.num_workers=0", "latency.iters=3", "latency.large_batch=8", "train.log_every=1"]


# ------------------------------------------------------------------ wandb's run file (leveldb log of protobufs)
# The framing that wandb's own writer uses (wandb/sdk/internal/datastore.py up to 0.18; core/pkg/leveldb in
# wandb-core): a 7-byte header ':W&B', 0xBEE1, 0, then 32 KiB blocks of chunks (crc32, length, type).

def wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is zero padding
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (crc, length, kind) == (0, 0, 0):
            pos += 32768 - pos % 32768
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad chunk checksum at byte {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: one complete record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


class OfflineRun:
    """What one ``offline-run-*`` folder holds, decoded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run_ids, self.config, self.history, self.artifacts, self.summary, self.exit_codes = [], {}, [], [], {}, []
        (wandb_file,) = folder.glob("run-*.wandb")
        for record in wandb_records(wandb_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run_ids.append(record.run.run_id)
                self.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                self.history.append(row)
            elif kind == "summary":
                self.summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                     for i in record.summary.update})
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
            elif kind == "exit":
                self.exit_codes.append(record.exit.exit_code)

    @property
    def steps(self) -> list[int]:
        return [row["_step"] for row in self.history]

    def rows_with(self, key: str) -> list[dict]:
        return [row for row in self.history if key in row]


def wandb_env(tmp: Path, mode_env: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_DIR=str(tmp / "wandb_dir"), WANDB_CACHE_DIR=str(tmp / "wandb_cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb_config"), WANDB_DATA_DIR=str(tmp / "wandb_data"),
               NETRC=str(tmp / "no_netrc"), PYTHONUNBUFFERED="1")
    if mode_env:
        env["WANDB_MODE"] = "offline"
    return env


# ------------------------------------------------------------------------------------ the killed + resumed run

@pytest.fixture(scope="module")
def resumed_run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb_run")
    out = tmp / "out"
    args = [sys.executable, "-m", "sctrain", *TINY, f"data.root={synthetic_root}", f"output_dir={out}",
            f"train.epochs={EPOCHS}", "train.checkpoint_every=2", "tracking.wandb=true",
            f"tracking.log_examples={EXAMPLES}", "tracking.tags=test,resume"]
    # First attempt, WANDB_MODE=offline from the environment; preempted a few steps in.
    log_path = tmp / "first_attempt.log"  # a file, not a pipe: a full pipe would stall the training
    with open(log_path, "w") as log_file:
        first = subprocess.Popen(args, cwd=REPO, env=wandb_env(tmp, mode_env=True), stdout=log_file,
                                 stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while last_logged_step(out / "metrics.jsonl") < 3:
        assert first.poll() is None, f"first attempt ended early: {log_path.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "first attempt logged nothing for 300 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == EXIT_PREEMPTED, log_path.read_text()[-3000:]
    stopped_at = last_logged_step(out / "metrics.jsonl")
    # Second attempt: tracking.mode=auto and no API key anywhere -> offline, saying so once.
    second = subprocess.run(args, cwd=REPO, env=wandb_env(tmp, mode_env=False), capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = [OfflineRun(Path(p)) for p in sorted(glob.glob(str(out / "wandb" / "offline-run-*")))]
    return out, runs, stopped_at, second.stderr


@pytest.mark.slow
def test_one_run_id_across_the_restart(resumed_run):
    out, runs, _, _ = resumed_run
    assert len(runs) == 2, [r.folder.name for r in runs]
    ids = {i for r in runs for i in r.run_ids} | {r.folder.name.rsplit("-", 1)[1] for r in runs}
    _, state = load_latest_state(out)
    assert ids == {state["tracker_run_id"]}, ids
    assert [r.exit_codes for r in runs] == [[EXIT_PREEMPTED], [0]]


@pytest.mark.slow
def test_steps_only_go_up_and_none_is_logged_twice(resumed_run):
    out, (first, second), stopped_at, _ = resumed_run
    for run in (first, second):
        assert run.steps == sorted(set(run.steps)), run.steps  # one row per step, increasing
    assert max(first.steps) == stopped_at and min(second.steps) == stopped_at + 1
    final = EPOCHS * STEPS_PER_EPOCH
    train_steps = [row["_step"] for r in (first, second) for row in r.rows_with("train/loss")]
    assert train_steps == list(range(1, final + 1))  # log_every=1: every step once, across the restart
    assert final == json.loads((out / "results.json").read_text())["steps"]
    assert [r["step"] for r in read_metrics(out).train] == train_steps


@pytest.mark.slow
def test_config_and_per_step_keys(resumed_run):
    _, runs, _, _ = resumed_run
    config = runs[-1].config
    assert config["train"]["epochs"] == EPOCHS and config["model"]["kwsnet"]["width"] == 8
    assert config["tracking"]["wandb"] is True and config["tracking"]["tags"] == ["test", "resume"]
    for row in runs[-1].rows_with("train/loss"):
        assert {"train/lr", "train/clips_per_s", "train/epoch"} <= set(row), row.keys()
        assert row["train/loss"] > 0 and row["train/lr"] > 0


@pytest.mark.slow
def test_per_epoch_validation_confusion_matrix_and_examples(resumed_run):
    out, runs, _, _ = resumed_run
    labels = json.loads((out / "results.json").read_text())["labels"]
    evals = {r["step"]: r for r in read_metrics(out).evals["validation"]}
    val_rows = [(run, row) for run in runs for row in run.rows_with("val/acc")]
    assert [row["_step"] for _, row in val_rows][-1] == EPOCHS * STEPS_PER_EPOCH
    assert [row["val/epoch"] for _, row in val_rows] == sorted({row["val/epoch"] for _, row in val_rows})
    for run, row in val_rows:
        record = evals[row["_step"]]
        assert row["val/acc"] == pytest.approx(record["acc"]) and row["val/loss"] == pytest.approx(record["loss"])
        assert {f"val/per_class_acc/{k}" for k in labels} <= set(row)
        # The confusion matrix: W&B's own chart table, read back and compared with the summed counts.
        table = json.loads((run.folder / "files" / row["val/confusion_matrix_table/path"]).read_text())
        assert table["columns"] == ["Actual", "Predicted", "nPredictions"] and len(table["data"]) == len(labels) ** 2
        counts = {(a, p): n for a, p, n in table["data"]}
        assert all(counts[labels[i], labels[j]] == record["confusion"][i][j]
                   for i in range(len(labels)) for j in range(len(labels)))
        assert row["val/examples/nrows"] == EXAMPLES
    examples = [a for run in runs for a in run.artifacts if a.type == "run_table" and "examples" in a.name]
    paths = [e.path for e in examples[-1].manifest.contents]
    assert sum(p.startswith("media/images/") and p.endswith(".png") for p in paths) == EXAMPLES
    assert sum(p.startswith("media/audio/") and p.endswith(".wav") for p in paths) == EXAMPLES
    test_row = runs[-1].rows_with("test/acc")[-1]
    assert "test/confusion_matrix_table/path" in test_row and "test/per_class_acc_chart_table/path" in test_row


@pytest.mark.slow
def test_results_summary_and_model_artifact(resumed_run):
    out, runs, _, _ = resumed_run
    results = json.loads((out / "results.json").read_text())
    summary = runs[-1].summary
    assert summary["results/test_acc"] == pytest.approx(results["test_acc"])
    assert summary["results/latency/cpu/batch1/p50_ms"] == pytest.approx(results["latency"]["cpu"]["batch1"]["p50_ms"])
    assert {f"results/per_class_test_acc/{k}" for k in results["labels"]} <= set(summary)
    (model,) = [a for a in runs[-1].artifacts if a.type == "model"]
    assert model.name == f"model-{runs[-1].run_ids[0]}"
    (entry,) = model.manifest.contents
    best = (out / "best_sc.pt").read_bytes()
    assert entry.path == "best_sc.pt" and entry.size == len(best)
    assert entry.digest == base64.b64encode(hashlib.md5(best).digest()).decode()  # the very file on disk


@pytest.mark.slow
def test_auto_mode_without_api_key_says_offline_once(resumed_run):
    out, _, _, stderr = resumed_run
    lines = [line for line in stderr.splitlines() if "no API key found" in line]
    assert len(lines) == 1 and str(out) in lines[0], stderr[-2000:]


@pytest.mark.slow
def test_report_written_at_the_end(resumed_run):
    out, _, _, _ = resumed_run
    import matplotlib.image as mpimg
    labels = json.loads((out / "results.json").read_text())["labels"]
    for name, file in (("loss", "loss.png"), ("confusion", "confusion_matrix.png")):
        height, width = mpimg.imread(out / file).shape[:2]
        assert (width, height) == figure_pixels(name, len(labels))


# ------------------------------------------------------------------------------------ W&B off: never imported

@pytest.mark.slow
def test_wandb_off_or_disabled_never_imports_wandb(synthetic_root, tmp_path):
    script = (
        "import json, sys\n"
        "from sctrain.__main__ import main\n"
        f"common = {TINY + [f'data.root={synthetic_root}', 'train.epochs=1', 'latency.enabled=false']!r}\n"
        f"assert main(common + ['output_dir={tmp_path / 'off'}', 'tracking.wandb=false']) == 0\n"
        f"assert main(common + ['output_dir={tmp_path / 'disabled'}', 'tracking.wandb=true',"
        " 'tracking.mode=disabled', 'tracking.report=false']) == 0\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb')))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    for name in ("off", "disabled"):
        assert (tmp_path / name / "results.json").is_file() and not (tmp_path / name / "wandb").exists()
    assert (tmp_path / "off" / "report.md").is_file() and not (tmp_path / "disabled" / "report.md").exists()


# ------------------------------------------------------------------------------------ units

def test_restart_skips_the_steps_wandb_already_holds(tmp_path, monkeypatch):
    """A kill after a saved state makes training redo some logged steps: W&B gets each step once."""
    import wandb

    from sctrain.config import TrackingConfig
    from sctrain.tracking.tracker import make_tracker

    for key, value in wandb_env(tmp_path, mode_env=True).items():
        monkeypatch.setenv(key, value)
    cfg = TrackingConfig(wandb=True, report=False)
    first = make_tracker(True, tmp_path, cfg, {"train": {"epochs": 1}})
    for step in range(1, 6):
        first.log_train(step, {"loss": 1.0 / step})
    first.finish(137)  # as if killed; the state it saved was at step 2
    wandb.teardown()  # waits for wandb-core to close the run file, as a process exit does
    time.sleep(1.1)  # W&B names run folders by the second
    second = make_tracker(True, tmp_path, cfg, {"train": {"epochs": 1}}, resume_id=first.run_id)
    for step in range(3, 9):
        second.log_train(step, {"loss": 1.0 / step})
    second.finish()
    wandb.teardown()
    runs = [OfflineRun(Path(p)) for p in sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*")))]
    assert [r.run_ids for r in runs] == [[first.run_id], [first.run_id]] and second.run_id == first.run_id
    assert [r.steps for r in runs] == [[1, 2, 3, 4, 5], [6, 7, 8]]
    assert [r.exit_codes for r in runs] == [[137], [0]]
    assert runs[1].history[0]["train/loss"] == pytest.approx(1 / 6)
    assert [r["step"] for r in read_metrics(tmp_path).train] == list(range(1, 9))  # the local copy: later wins


def test_auto_mode_follows_the_api_key(monkeypatch, tmp_path):
    from sctrain.tracking.wandb_run import resolve_mode

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode("auto") == "offline"  # no netrc file at all
    netrc.write_text("machine example.com login user password abc\n")
    assert resolve_mode("auto") == "offline"  # an entry, but not for W&B
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_mode("auto") == "offline"  # a self-hosted server needs its own entry
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("offline") == "offline" and resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") is None  # an exported WANDB_MODE is left to wandb


def test_last_logged_step_ignores_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert last_logged_step(path) == -1
    path.write_text('{"kind": "train", "step": 4}\n{"kind": "eval", "step": 6}\n{"kind": "results", "steps": 6}\n')
    assert last_logged_step(path) == 6
    with open(path, "a") as f:
        f.write('{"kind": "train", "st')  # killed mid-write
    assert last_logged_step(path) == 6

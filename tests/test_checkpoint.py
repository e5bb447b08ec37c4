"""Checkpoint files: atomic writes, one-line errors for bad files, no code execution on load, state folders,
the checkpointer's save/restore, and the graceful-stop signal handler."""
from __future__ import annotations

import logging
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from support import REPO

from sctrain.artifacts import best
from sctrain.artifacts import files as artifact_files
from sctrain.artifacts.files import CheckpointError
from sctrain.training.checkpoint import files as checkpoint
from sctrain.training.checkpoint.policy import Checkpointer, Progress
from sctrain.training.stopping import GracefulStop


def tiny_parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def write_state(out: Path, step: int, keep_last: int = 5, **progress) -> Path:
    payload = {"progress": {"epoch": 0, "step_in_epoch": step, "global_step": step, **progress},
               "model": {"w": torch.full((2,), float(step))}, "optimizer": {}, "scheduler": {},
               "rng": [{"torch": torch.get_rng_state()}]}
    return checkpoint.save_state(out, step, payload, keep_last)


# ------------------------------------------------------------------------------------ single files

def test_atomic_save_round_trip_and_stale_temp_files_are_removed(tmp_path):
    path = tmp_path / "best_sc.pt"
    stale = tmp_path / ".best_sc.pt.tmp999999"
    stale.write_bytes(b"half a checkpoint")  # left by a writer killed mid-save
    artifact_files.atomic_save({"format": best.BEST_FORMAT, "model": {"w": torch.ones(3)}}, path)
    assert torch.equal(artifact_files.safe_load(path, best.BEST_FORMAT)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_sc.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "best_sc.pt"
    artifact_files.atomic_save({"format": best.BEST_FORMAT, "model": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(CheckpointError) as info:
        best.load_best(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and ("corrupt" in message or "safely" in message)


def test_foreign_and_missing_checkpoints_are_rejected(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt is not an sctrain-best/1 checkpoint"):
        best.load_best(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        best.load_best(tmp_path / "nothing.pt")


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a hostile checkpoint could do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_loading_never_runs_code_from_a_pickle(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": best.BEST_FORMAT, "model": {}, "labels": [], "config": {}, "x": _RunsCode(marker)},
               path)
    with open(path, "rb") as f:  # the payload is live: a plain unpickler does run it
        torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="cannot be loaded safely|truncated or corrupt"):
        best.load_best(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"  # not even a torch zip: a bare pickle
    raw.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(CheckpointError):
        checkpoint.load_state(raw)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ state folders

def test_states_are_pruned_newest_first_and_interrupted_saves_ignored_then_cleaned(tmp_path):
    for step in (2, 4, 6):
        write_state(tmp_path, step, keep_last=2)
    assert [p.name for p in checkpoint.list_states(tmp_path)] == ["step_000000006", "step_000000004"]
    stale = tmp_path / "state/.tmp-step_000000008-12345"  # a writer killed mid-save left this
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"PK\x03\x04 half")
    assert checkpoint.load_latest_state(tmp_path)[0].name == "step_000000006"
    write_state(tmp_path, 8, keep_last=2)
    assert not stale.exists()
    assert [p.name for p in checkpoint.list_states(tmp_path)] == ["step_000000008", "step_000000006"]


def test_same_step_is_replaced_and_a_copy_moved_aside_still_counts(tmp_path):
    write_state(tmp_path, 4, keep_last=2)
    write_state(tmp_path, 6, keep_last=2, epoch=0)
    write_state(tmp_path, 6, keep_last=2, epoch=1)  # epoch end right after a periodic save of the same step
    assert checkpoint.load_state(tmp_path / "state/step_000000006")["progress"]["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["step_000000004", "step_000000006"]
    # A kill between moving the old copy aside and renaming the new one leaves only the moved copy.
    os.rename(tmp_path / "state/step_000000006", tmp_path / "state/.old-step_000000006-4242")
    path, state = checkpoint.load_latest_state(tmp_path)
    assert path.name == ".old-step_000000006-4242" and state["progress"]["global_step"] == 6


def test_corrupt_newest_state_is_reported_and_the_previous_used(tmp_path, caplog):
    write_state(tmp_path, 2)
    newest = write_state(tmp_path, 4) / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="sctrain.training.checkpoint.files"):
        path, state = checkpoint.load_latest_state(tmp_path)
    assert path.name == "step_000000002" and state["progress"]["global_step"] == 2
    assert "step_000000004/state.pt is truncated or corrupt" in caplog.text and "previous state" in caplog.text
    (tmp_path / "state/step_000000002/state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 2 training states"):
        checkpoint.load_latest_state(tmp_path)


def test_incomplete_state_and_empty_output_dir(tmp_path):
    assert checkpoint.load_latest_state(tmp_path) == (None, None)
    checkpoint.save_state(tmp_path, 3, {"progress": {}}, keep_last=2)
    with pytest.raises(CheckpointError, match=r"state.pt is incomplete \(lacks model, optimizer, scheduler, rng\)"):
        checkpoint.load_state(tmp_path / "state/step_000000003")


def test_resume_never_moves_earlier_states_aside(tmp_path):
    write_state(tmp_path, 2)
    moved = checkpoint.set_aside_states(tmp_path)
    assert moved.name.startswith("state.replaced-") and (moved / "step_000000002/state.pt").is_file()
    assert checkpoint.list_states(tmp_path) == [] and checkpoint.set_aside_states(tmp_path) is None


# ------------------------------------------------------------------------------------ checkpointer

def test_checkpointer_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    parts = tiny_parts(0)
    saver = Checkpointer(tmp_path, every_steps=2, keep_last=2, is_writer=True, world_size=1, rank=0, global_batch=16)
    progress = Progress(epoch=1, step_in_epoch=3, global_step=9, best_val_acc=0.5, best_epoch=0)
    assert saver.due(Progress(global_step=4)) and not saver.due(Progress(global_step=5))
    torch.manual_seed(123)
    saver.save(progress, parts, extra={"tracker_run_id": "abc"})
    saver.save(progress, parts)  # the same step again: no second write
    expected_draw = torch.rand(5)
    assert [p.name for p in checkpoint.list_states(tmp_path)] == ["step_000000009"]

    fresh = tiny_parts(1)
    torch.manual_seed(999)
    state = checkpoint.load_state(checkpoint.list_states(tmp_path)[0])
    restored = Checkpointer(tmp_path, 2, 2, True, 1, 0, global_batch=16).restore(state, fresh, "s", steps_per_epoch=6)
    assert restored == progress and state["tracker_run_id"] == "abc"
    assert torch.equal(torch.rand(5), expected_draw)  # the RNG continues where the saved run was
    for key, tensor in parts["model"].state_dict().items():
        assert torch.equal(fresh["model"].state_dict()[key], tensor)
    assert fresh["scheduler"].get_last_lr() == parts["scheduler"].get_last_lr()
    assert torch.equal(fresh["optimizer"].state_dict()["state"][0]["exp_avg"],
                       parts["optimizer"].state_dict()["state"][0]["exp_avg"])


def test_state_from_another_model_is_a_one_line_error(tmp_path):
    Checkpointer(tmp_path, 2, 2, True, 1, 0).save(Progress(global_step=2), tiny_parts())
    other = {"model": torch.nn.Linear(5, 2)}
    state = checkpoint.load_state(checkpoint.list_states(tmp_path)[0])
    with pytest.raises(CheckpointError, match=r"^S: its model does not fit this run's config \(.*train.resume=never"):
        Checkpointer(tmp_path, 2, 2, True, 1, 0).restore(state, other, "S")


def test_restore_with_a_bigger_global_batch_keeps_the_position_in_the_epoch(tmp_path, caplog):
    parts = tiny_parts()
    Checkpointer(tmp_path, 0, 2, True, 1, 0, global_batch=16).save(
        Progress(epoch=2, step_in_epoch=5, global_step=17), parts)
    state = checkpoint.load_state(checkpoint.list_states(tmp_path)[0])
    fresh = tiny_parts()
    with caplog.at_level(logging.WARNING):
        progress = Checkpointer(tmp_path, 0, 2, True, 1, 0, global_batch=32).restore(state, fresh, "s",
                                                                                      steps_per_epoch=3)
    assert (progress.epoch, progress.step_in_epoch, progress.global_step) == (2, 2, 8)  # 80 clips done -> 2 steps
    assert fresh["scheduler"].last_epoch == 8 and fresh["scheduler"].get_last_lr() == [pytest.approx(0.1 / 9)]
    assert "16 clips per step, this run takes 32" in caplog.text


# ------------------------------------------------------------------------------------ signals

@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_graceful_stop_records_the_signal_instead_of_dying(name):
    one_process = types.SimpleNamespace(num_processes=1)  # any_rank_failed needs only the world size
    before = signal.getsignal(getattr(signal, name))
    stop = GracefulStop().install()
    try:
        assert not stop.should_stop(one_process)
        os.kill(os.getpid(), getattr(signal, name))
        assert stop.received == name and stop.should_stop(one_process)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert stop.received == name
    finally:
        stop.uninstall()
    assert signal.getsignal(getattr(signal, name)) is before


def test_cli_reports_a_corrupt_resume_checkpoint_in_one_line(synthetic_root, tmp_path):
    bad = tmp_path / "step_000000004"
    bad.mkdir()
    (bad / "state.pt").write_bytes(b"PK\x03\x04" + os.urandom(200))
    result = subprocess.run(
        [sys.executable, "-m", "sctrain", "--config", "configs/debug.yaml", f"data.root={synthetic_root}",
         f"output_dir={tmp_path / 'out'}", f"train.resume={bad}", "model.kwsnet.width=8", "data.num_workers=0"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sctrain: error: checkpoint {bad / 'state.pt'} is truncated or corrupt")
    assert "Traceback" not in result.stderr

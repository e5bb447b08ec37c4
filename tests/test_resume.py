"""Exact resume after signals, ``kill -9`` and a kill during a checkpoint write: real CPU runs, 1 and 2 processes.

Every scenario ends with weights bitwise equal (``torch.equal`` on every tensor of ``best_sc.pt`` and of the
last training state) to an uninterrupted run of the same config and world size.
"""
from __future__ import annotations

import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
from support import (
    TIMEOUT,
    assert_same_weights,
    finish,
    free_port,
    kill_tree,
    sctrain_args,
    stalled_save,
    start,
    wait_for,
)

from sctrain.artifacts.best import load_best
from sctrain.training.checkpoint.files import list_states, load_state
from sctrain.training.stopping import EXIT_PREEMPTED

pytestmark = pytest.mark.slow


def torchrun(procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]


def state_at_least(out: Path, step: int):
    return lambda: next((p for p in list_states(out) if int(re.search(r"step_(\d+)", p.name)[1]) >= step), None)


def newest_step(out: Path) -> int:
    return load_state(list_states(out)[0])["progress"]["global_step"]


def resumed_step(log_text: str) -> int:
    found = re.findall(r"resuming from \S+ \(step (\d+)\)", log_text)
    assert len(found) == 1, log_text[-3000:]
    return int(found[0])


def restart_and_kill9(cmd: list[str], out: Path, log: Path, resumed_from: int) -> int:
    """Restart; ``kill -9`` the whole process tree (like a dying node) as soon as state 8 (mid-epoch 2)
    exists. Returns the newest state's step."""
    proc = start(cmd, log)
    wait_for(state_at_least(out, 8), proc, log, "state 8")
    kill_tree(proc)
    assert resumed_step(log.read_text()) == resumed_from
    newest = load_state(list_states(out)[0])["progress"]
    assert newest["global_step"] >= 8 and newest["step_in_epoch"] > 0  # a mid-epoch state
    return newest["global_step"]


@pytest.fixture(scope="module")
def reference_1proc(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref1")
    finish([sys.executable, "-m", "sctrain", *sctrain_args(synthetic_root, out, 1)], out.with_suffix(".log"))
    assert [p.name for p in list_states(out)] == ["step_000000012", "step_000000010", "step_000000008"]
    return out


@pytest.fixture(scope="module")
def reference_2proc(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref2")
    finish([*torchrun(2), "-m", "sctrain", *sctrain_args(synthetic_root, out, 2)], out.with_suffix(".log"))
    return out


def test_one_process_sigterm_kill9_and_kill_during_save_resume_exactly(synthetic_root, reference_1proc, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sctrain", *sctrain_args(synthetic_root, out, 1)]

    # 1. SIGTERM mid-epoch: finish the step, save once, exit 75.
    log = tmp_path / "1-sigterm.log"
    proc = start(cmd, log)
    wait_for(state_at_least(out, 2), proc, log, "the first state")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == EXIT_PREEMPTED, log.read_text()[-3000:]
    text = log.read_text()
    stopped = int(re.search(r"stopped after step (\d+) on a signal", text).group(1))
    assert "received SIGTERM" in text and text.count(f"saved training state {out}/state/step_{stopped:09d}") == 1
    assert newest_step(out) == stopped and stopped < 6  # stopped inside the first epoch

    # 2. kill -9 mid-epoch, right after a later state appears.
    at_kill = restart_and_kill9(cmd, out, tmp_path / "2-kill9.log", resumed_from=stopped)

    # 3. kill -9 while the next state is being written (tests/stalled_save.py stalls the write half-way).
    log = tmp_path / "3-kill-in-save.log"
    proc = start(stalled_save(cmd, from_step=at_kill + 1), log)
    partial = wait_for(lambda: next((p for p in (out / "state").glob(f".tmp-step_*-{proc.pid}/state.pt")
                                     if p.stat().st_size > 0), None), proc, log, "a save in progress")
    kill_tree(proc)
    assert resumed_step(log.read_text()) == at_kill
    assert partial.is_file() and newest_step(out) == at_kill  # the stale folder is ignored, the last state intact

    # 4. Restart: continues from the intact state, cleans the stale folder, ends where the reference ended.
    text = finish(cmd, tmp_path / "4-final.log")
    assert resumed_step(text) == at_kill
    assert not partial.parent.exists()
    assert_same_weights(out, reference_1proc)


def test_device_placement_trains_like_the_loader_and_resumes_exactly(synthetic_root, reference_1proc, tmp_path):
    """``data.placement=device`` (batches gathered from splits copied to the device once), stopped by SIGTERM
    mid-epoch and resumed, ends bitwise where the loader-placement reference ended: same batches, same order,
    same augmentation draws."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sctrain", *sctrain_args(synthetic_root, out, 1), "data.placement=device"]
    log = tmp_path / "1-sigterm.log"
    proc = start(cmd, log)
    wait_for(state_at_least(out, 2), proc, log, "the first state")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == EXIT_PREEMPTED, log.read_text()[-3000:]
    assert "batches: device placement (data.placement=device" in log.read_text()
    stopped = newest_step(out)
    text = finish(cmd, tmp_path / "2-final.log")
    assert resumed_step(text) == stopped
    assert_same_weights(out, reference_1proc)


def test_weight_average_resumes_exactly(synthetic_root, tmp_path):
    """``train.ema_decay``: the average is part of the training state, so a run stopped by SIGTERM mid-epoch and
    resumed ends with the same average (and best_sc.pt, which holds it) as an uninterrupted one."""
    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "sctrain", *sctrain_args(synthetic_root, out, 1), "train.ema_decay=0.9"]

    one_thread = {"OMP_NUM_THREADS": "1"}  # both runs alike; OpenMP stalls on an oversubscribed machine
    reference, out = tmp_path / "reference", tmp_path / "run"
    finish(command(reference), tmp_path / "reference.log", one_thread)
    log = tmp_path / "1-sigterm.log"
    proc = start(command(out), log, one_thread)
    wait_for(state_at_least(out, 2), proc, log, "the first state")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == EXIT_PREEMPTED, log.read_text()[-3000:]
    stopped = newest_step(out)
    assert stopped < 12 and load_state(list_states(out)[0])["ema"]["n_averaged"] == stopped
    text = finish(command(out), tmp_path / "2-final.log", one_thread)
    assert resumed_step(text) == stopped
    assert_same_weights(out, reference)
    assert load_best(out / "best_sc.pt")["metrics"]["weights"] == "ema"


def test_corrupt_newest_state_falls_back_to_the_previous_one(synthetic_root, reference_1proc, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_1proc, out)
    newest = out / "state/step_000000012/state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # truncated, as by a full disk
    (out / "results.json").unlink()
    text = finish([sys.executable, "-m", "sctrain", *sctrain_args(synthetic_root, out, 1)], tmp_path / "run.log")
    assert re.search(r"step_000000012/state.pt is truncated or corrupt .*falling back to the previous state", text)
    assert resumed_step(text) == 10
    assert_same_weights(out, reference_1proc)


def test_two_processes_stop_together_on_one_signal_and_resume_exactly_after_kill9(
        synthetic_root, reference_2proc, tmp_path):
    out = tmp_path / "run"
    # The reference gathered its batches with the loader; this run gathers them from the splits copied to
    # the (CPU) device: each rank must see the same shard in the same order, across the restarts too.
    args = [*sctrain_args(synthetic_root, out, 2), "data.placement=device"]

    # 1. Two ranks started directly (as `srun -n 2` would), so each rank's exit code is visible. Only rank 1
    #    gets SIGUSR1: both finish the same step, rank 0 saves once, both exit 75.
    port = free_port()
    logs = [tmp_path / f"1-rank{r}.log" for r in range(2)]
    ranks = [start([sys.executable, "-m", "sctrain", *args], logs[r],
                   {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    try:
        wait_for(state_at_least(out, 2), ranks[0], logs[0], "the first state")
        ranks[1].send_signal(signal.SIGUSR1)
        codes = [p.wait(TIMEOUT) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                kill_tree(p)
    text0, text1 = (log.read_text() for log in logs)
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], text0[-2000:] + text1[-2000:]
    assert "received SIGUSR1" in text1 and "received SIGUSR1" not in text0
    stopped = int(re.search(r"stopped after step (\d+) on a signal", text0).group(1))
    assert text0.count(f"saved training state {out}/state/step_{stopped:09d}") == 1
    state = load_state(list_states(out)[0])
    assert state["progress"]["global_step"] == stopped and len(state["rng"]) == 2  # both ranks' RNG, same step

    # 2. torchrun restart, then kill -9 of torchrun and its workers mid-epoch.
    cmd = [*torchrun(2), "-m", "sctrain", *args]
    at_kill = restart_and_kill9(cmd, out, tmp_path / "2-kill9.log", resumed_from=stopped)

    # 3. Restart the same command: resumes from the last state and ends bitwise where the reference ended.
    text = finish(cmd, tmp_path / "3-final.log")
    assert resumed_step(text) == at_kill
    assert_same_weights(out, reference_2proc)

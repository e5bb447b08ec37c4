"""Fault injection: every failure of the reliability issue, met as a user meets it (``python -m sctrain ...`` in a
subprocess, on the generated dataset), with the one line it must print, its exit code, and what it leaves behind.

Recovery after ``kill -9``, SIGTERM to the whole process group and a full disk ends bitwise where one
uninterrupted run of the same config ends (the helpers and the config are test_resume's, in tests/support).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import (
    REPO,
    TIMEOUT,
    assert_same_weights,
    finish,
    kill_tree,
    run,
    sctrain_args,
    stalled_save,
    start,
    wait_for,
)

from sctrain.artifacts.best import load_best
from sctrain.config import DataConfig
from sctrain.data.pack import pack_dataset
from sctrain.data.speechcommands import ensure_dataset, scan_dataset
from sctrain.training.checkpoint.files import list_states, load_state
from sctrain.training.stopping import EXIT_INTERRUPTED, EXIT_PREEMPTED
from sctrain.utils import json_text

SHORT = ["train.epochs=1", "train.max_steps=1"]  # for faults in the data: a run that gets past loading is enough


def train_cmd(root: Path, out: Path | str, *extra: str) -> list[str]:
    """test_resume's one-process config (6 steps per epoch, a state every 2 steps, 3 kept), then ``extra``."""
    return [sys.executable, "-m", "sctrain", *sctrain_args(root, out, 1), *extra]


def error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The line that ends stderr, after checking the exit code and that no traceback came before it."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1].strip()


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, which Python writes by default and JSON does not have."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))


def assert_intact(out: Path) -> None:
    """What a stopped run leaves loads: the newest state (finite weights) and best_sc.pt, when there are any; no
    temporary files of an interrupted save; every JSON file strict JSON."""
    states = list_states(out)
    if states:
        state = load_state(states[0])
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
        assert not list((out / "state").glob(".tmp-*")) and not list((out / "state").glob(".old-*"))
    if (out / "best_sc.pt").exists():
        load_best(out / "best_sc.pt")
    assert not list(out.glob(".*.tmp*")), list(out.glob(".*.tmp*"))
    for path in out.glob("*.json"):
        strict_json(path.read_text())
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            strict_json(line)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs at ``path`` (a filesystem that fills up, or refuses writes); skips where mounting is denied."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory) -> Path:
    """The uninterrupted run every recovery is compared with."""
    out = tmp_path_factory.mktemp("faults_ref")
    finish(train_cmd(synthetic_root, out), out.with_suffix(".log"))
    assert_intact(out)
    return out


# ------------------------------------------------------------------------ stops, and resuming after them

@pytest.mark.slow
def test_a_second_run_is_refused_and_the_lock_of_a_killed_run_blocks_nobody(synthetic_root, reference, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(synthetic_root, out)
    log = tmp_path / "1-first.log"
    # The save of state 6 stalls half-written (test hook): the first run is busy when the second starts.
    first = start(stalled_save(cmd, from_step=6), log)
    wait_for(lambda: list((out / "state").glob(".tmp-step_000000006-*/state.pt")), first, log, "the stalled save")

    line = error_line(run(cmd))
    holder = f"PID {first.pid} on host {socket.gethostname()}"
    assert line == (f"sctrain: error: output_dir {out} is in use by another training run ({holder}); wait for it "
                    "to end, stop it, or pick another output_dir")
    assert first.poll() is None  # the refused run wrote nothing: the first one goes on

    kill_tree(first)  # kill -9 mid-save: the kernel drops the lock, the file with the dead PID stays
    assert holder in (out / ".lock").read_text()
    assert load_state(list_states(out)[0])["progress"]["global_step"] == 4  # the half-written state 6 is ignored
    text = finish(cmd, tmp_path / "2-rerun.log")
    assert f"took over {out / '.lock'} from {holder}" in text
    assert_same_weights(out, reference)


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_and_the_rerun_ends_bitwise_as_uninterrupted(
        synthetic_root, reference, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(synthetic_root, out, "data.num_workers=2")  # workers: what the group signal used to kill first
    log = tmp_path / "1-sigterm.log"
    proc = start(cmd, log)
    wait_for(lambda: list_states(out), proc, log, "the first state")
    os.killpg(proc.pid, signal.SIGTERM)  # kill -- -PGID
    assert proc.wait(TIMEOUT) == EXIT_PREEMPTED, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "received SIGTERM" in text
    stopped = int(re.search(r"stopped after step (\d+) on a signal", text)[1])
    assert_intact(out)
    assert load_state(list_states(out)[0])["progress"]["global_step"] == stopped
    # More loader workers than the reference had change nothing: the sampler and augmentation live in the main process.
    finish(cmd, tmp_path / "2-rerun.log")
    assert_same_weights(out, reference)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_saves_and_prints_the_command_that_resumes(synthetic_root, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(synthetic_root, out, "data.num_workers=2", "train.resume=never")
    log = tmp_path / "ctrl-c.log"
    proc = start(cmd, log)
    wait_for(lambda: list_states(out), proc, log, "the first state")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    assert proc.wait(TIMEOUT) == EXIT_INTERRUPTED, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text
    found = re.search(r"sctrain: interrupted after step (\d+); training state saved in (\S+); resume with: (.+)", text)
    step, state = int(found[1]), Path(found[2])
    assert state == list_states(out)[0] and load_state(state)["progress"]["global_step"] == step
    assert_intact(out)
    # The same command, less what would start over.
    assert shlex.split(found[3]) == ["python", "-m", "sctrain", *cmd[3:-1], "train.resume=auto"]


@pytest.mark.slow
def test_a_full_disk_leaves_no_partial_files_and_the_rerun_after_freeing_space_ends_bitwise(
        synthetic_root, reference, tmp_path):
    state_bytes = (list_states(reference)[0] / "state.pt").stat().st_size
    with tmpfs(tmp_path / "small", "2m") as disk:
        # Room for two and a half states: the third save (step 6) runs out of space.
        filler = disk / "other-files"
        filler.write_bytes(bytes(shutil.disk_usage(disk).free - int(2.5 * state_bytes)))
        out = disk / "run"
        cmd = train_cmd(synthetic_root, out)
        line = error_line(run(cmd))
        assert line.startswith(f"sctrain: error: no space left on {disk} (need ~0.3 MB, ") and "while saving" in line
        assert_intact(out)
        assert [p.name for p in list_states(out)] == ["step_000000004", "step_000000002"]

        filler.unlink()
        finish(cmd, tmp_path / "rerun.log")
        assert_same_weights(out, reference)


def test_resume_from_another_folder_gives_the_new_folder_its_best_model(synthetic_root, reference, tmp_path):
    # The reference's last state has every epoch done and a better validation accuracy than anything evaluated
    # here: the new folder still needs a best_sc.pt of its own, and results.
    out = tmp_path / "fine-tune"
    result = run(train_cmd(synthetic_root, out, f"train.resume={list_states(reference)[0]}"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_best(out / "best_sc.pt")["metrics"]["val_acc"] == strict_json((out / "results.json").read_text())[
        "val_acc"]
    assert_intact(out)


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_state(synthetic_root, tmp_path):
    out = tmp_path / "run"
    line = error_line(run(train_cmd(synthetic_root, out, "train.lr=1e30", "train.checkpoint_every=1")))
    assert re.fullmatch(rf"sctrain: error: training diverged: the training loss is (nan|inf) at step 2 "
                        rf"\(train\.lr=1e\+30\); the last good state is {out}/state/step_000000001; .*", line), line
    assert [p.name for p in list_states(out)] == ["step_000000001"]  # nothing saved after the loss went bad
    assert not (out / "best_sc.pt").exists() and not (out / "results.json").exists()
    assert_intact(out)


def test_json_is_written_without_bare_nan():
    text = json_text({"a": float("nan"), "b": [np.float32("inf"), torch.tensor(1.5)], "c": np.array([1.0, np.nan])})
    assert strict_json(text) == {"a": None, "b": [None, 1.5], "c": [1.0, None]}


# ------------------------------------------------------------------------------------ bad data on disk

def test_a_truncated_packed_cache_is_packed_again(synthetic_copy, tmp_path):
    packed = pack_dataset(scan_dataset(synthetic_copy, "all"), progress=False)
    audio = packed.cache_dir / "audio_train.npy"
    del packed
    size = audio.stat().st_size
    with open(audio, "r+b") as f:
        f.truncate(size // 2)  # a copy or a disk that gave out half-way
    result = run(train_cmd(synthetic_copy, tmp_path / "run", *SHORT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("does not match its meta.json") == 1, result.stderr[-3000:]
    assert f"(audio_train.npy is {size // 2} bytes, its header needs {size}): packing it again" in result.stderr
    assert audio.stat().st_size == size


def test_word_folders_without_split_lists_get_the_reference_split_and_half_a_pair_is_named(synthetic_copy, tmp_path):
    (synthetic_copy / "testing_list.txt").unlink()  # hand-made lists, one of them lost: never guessed around
    line = error_line(run([sys.executable, "-m", "sctrain", "--config", "configs/debug.yaml",
                           f"data.root={synthetic_copy}", "data.download=false", f"output_dir={tmp_path / 'run'}"]))
    assert line.startswith(f"sctrain: error: {synthetic_copy} has validation_list.txt but no testing_list.txt")
    assert "download" not in line and "v0.02" not in line
    (synthetic_copy / "validation_list.txt").unlink()  # no lists at all: a user's own recordings
    ensure_dataset(DataConfig(root=str(synthetic_copy), download=True))  # never a download over the user's data
    result = run(train_cmd(synthetic_copy, tmp_path / "run2", *SHORT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote them to" in result.stderr and "reference hash split" in result.stderr
    assert (synthetic_copy / "validation_list.txt").is_file() and (synthetic_copy / "testing_list.txt").is_file()


def test_a_class_without_training_clips_is_refused_and_one_without_test_clips_pointed_out(synthetic_copy, tmp_path):
    (synthetic_copy / "zzz").mkdir()
    line = error_line(run(train_cmd(synthetic_copy, tmp_path / "run1")))
    assert line == f"sctrain: error: label 'zzz' has no training clips: {synthetic_copy / 'zzz'} holds no .wav clips"
    (synthetic_copy / "zzz").rmdir()
    solo = synthetic_copy / "solo"
    solo.mkdir()
    shutil.copy(next((synthetic_copy / "yes").glob("*.wav")), solo)  # one clip: training only
    result = run(train_cmd(synthetic_copy, tmp_path / "run2", *SHORT))
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("validation", "test"):
        assert f"classes without {split} clips (their {split} accuracy is not measured): solo" in result.stderr


def test_skipping_a_bad_clip_is_reported_once(synthetic_copy, tmp_path):
    bad = sorted((synthetic_copy / "_background_noise_").glob("*.wav"))[0]
    bad.write_bytes(b"not audio")  # a keyword task reads the noise recordings twice: to plan _silence_ cuts, to pack
    result = run(train_cmd(synthetic_copy, tmp_path / "run", "data.task=keywords", "data.skip_bad_clips=true", *SHORT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(bad.name) == 1, result.stderr[-3000:]
    assert "skipped 1 bad clips" in result.stderr


# ------------------------------------------------------------------------------ folders the tool cannot use

def test_unusable_output_dirs_and_export_targets_are_one_line(synthetic_root, reference, tmp_path):
    a_file = reference / "config.yaml"
    best = reference / "best_sc.pt"
    export = [sys.executable, "-m", "sctrain.export", str(best), "--format", "torchscript",
              "--check-audio", str(synthetic_root)]
    cases = [(train_cmd(synthetic_root, a_file), f"sctrain: error: output_dir {a_file} is a file, not a folder; "
                                                 "pick another output_dir"),
             (train_cmd(synthetic_root, ""), "sctrain: error: config key 'output_dir': must name a folder, got an "
                                             "empty value"),
             ([*export, "--out", str(tmp_path)], f"sctrain: error: --out {tmp_path} is a folder; name the file to "
                                                 f"write, e.g. {tmp_path / 'model.torchscript.pt'}")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for cmd, _ in cases]  # side by side: each spends its time importing torch
    for proc, (cmd, expected) in zip(procs, cases):
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        assert error_line(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)) == expected
    assert not list(tmp_path.glob(".tmp*")) and not (REPO / "best_sc.pt").exists()


def test_read_only_output_dir_and_export_folder_are_one_line(synthetic_root, reference, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        train = run(train_cmd(synthetic_root, ro / "run"))
        assert error_line(train) == (f"sctrain: error: cannot write into output_dir {ro / 'run'} (Read-only file "
                                     "system); pick a writable folder")
        out = ro / "model.torchscript.pt"
        export = run([sys.executable, "-m", "sctrain.export", str(reference / "best_sc.pt"), "--format",
                      "torchscript", "--check-audio", str(synthetic_root), "--out", str(out)])
        assert error_line(export) == (f"sctrain: error: cannot write {out} (Read-only file system); pick a writable "
                                      "folder with --out")


def test_an_output_dir_that_turns_unwritable_mid_run_is_one_line_and_resumes_exactly(synthetic_root, reference,
                                                                                    tmp_path):
    # The probe: a PermissionError traceback from metrics.jsonl. The immutable flag refuses writes even to
    # root (the tests' user); the save of step 4 stalls, so the run is surely still going when the flag is set.
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    out = tmp_path / "run"
    cmd = train_cmd(synthetic_root, out)
    log = tmp_path / "1-first.log"
    first = start(stalled_save(cmd, from_step=4, seconds=10), log)
    wait_for(lambda: list((out / "state").glob(".tmp-step_000000004-*/state.pt")), first, log, "the stalled save")
    metrics = out / "metrics.jsonl"
    flagged = subprocess.run(["chattr", "+i", str(metrics)], capture_output=True, text=True)
    if flagged.returncode != 0:
        kill_tree(first)
        pytest.skip(f"chattr +i is not supported here: {flagged.stderr.strip()}")
    try:
        rc = first.wait(TIMEOUT)
    finally:
        subprocess.run(["chattr", "-i", str(metrics)], check=True)
    line = error_line(subprocess.CompletedProcess(cmd, rc, "", log.read_text()))
    assert line == (f"sctrain: error: cannot write into output_dir {out} (Operation not permitted, writing "
                    "metrics.jsonl); pick a writable folder, or make it writable again and run the same command to "
                    "resume")
    assert_intact(out)
    finish(cmd, tmp_path / "2-rerun.log")  # writable again: the same command resumes
    assert_same_weights(out, reference)


def test_report_on_garbage_and_synth_onto_a_file_are_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(os.urandom(3000) + b"\n[1, 2]\n{\"kind\": \"train\"}\n")
    line = error_line(run([sys.executable, "-m", "sctrain.report", str(tmp_path)]))
    assert line.startswith(f"sctrain.report: error: {tmp_path / 'metrics.jsonl'} holds no training or evaluation "
                           "records (none of its")
    a_file = tmp_path / "metrics.jsonl"
    line = error_line(run([sys.executable, "-m", "sctrain.synth", str(a_file)]))
    assert line == f"error: {a_file} is a file, not a folder; pick a new folder for the synthetic dataset"

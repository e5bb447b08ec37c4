"""slurm/train.sbatch on a real single-node Slurm cluster: USR1 -> save -> requeue -> resume -> finish.

The cluster comes from ../shared/tools/slurm-local/start.sh (CI starts it too; starting it again is a no-op).
The job runs 2 CPU processes (one torchrun, SCTRAIN_PROCS_PER_NODE=2); the GPU line is overridden on the
sbatch command line, as on any CPU-only partition.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, SHARED

from sctrain.artifacts.best import load_best
from sctrain.training.checkpoint.files import list_states, load_state

SLURM_LOCAL = SHARED / "tools/slurm-local"
TIMEOUT = 420

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    if not (SLURM_LOCAL / "start.sh").is_file():
        pytest.skip(f"no slurm-local tool at {SLURM_LOCAL}")
    if shutil.which("apt-get") is None and shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    started = subprocess.run(["bash", str(SLURM_LOCAL / "start.sh")], capture_output=True, text=True, timeout=600)
    if started.returncode != 0 or "SLURM READY" not in started.stdout:
        pytest.skip(f"could not start the local Slurm cluster: {(started.stderr or started.stdout).strip()[-500:]}")


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match.group(1) if match else ""


def wait_until(predicate, what: str, log: Path, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; job log:\n{log.read_text()[-4000:] if log.exists() else '(none)'}")


def test_usr1_saves_requeues_and_the_next_start_resumes(slurm, synthetic_root, tmp_path):
    out = tmp_path / "run"
    # The submitting shell's environment, as after `source .venv/bin/activate`.
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{sys.prefix}/bin:{os.environ.get('PATH', '')}",
           "SCTRAIN_PROCS_PER_NODE": "2"}
    submit = subprocess.run(
        ["sbatch", "--parsable", "--gres=none", "--cpus-per-task=2", "--time=15", "--job-name=sctrain-test",
         f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch",
         # 4 epochs (24 steps): the signal, sent once the first state exists, lands mid-training even when
         # the machine is busy and Slurm takes a few seconds to deliver it (with 2 epochs it once landed after
         # the last step, in the final evaluation).
         "--config", "configs/debug.yaml", f"data.root={synthetic_root}", f"output_dir={out}", "train.epochs=4",
         "train.batch_size=8", "model.kwsnet.width=8", "data.num_workers=0", "latency.enabled=false",
         "tracking.report=false",
         "train.checkpoint_every=2", "train.log_every=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    log = tmp_path / f"sctrain-test-{job}.out"
    try:
        wait_until(lambda: list_states(out), "the first training state", log)
        signalled = subprocess.run(["scancel", "--signal=USR1", "--batch", job], capture_output=True, text=True)
        assert signalled.returncode == 0, signalled.stderr

        def ended() -> bool:
            # No shortcut past Slurm's requeue delay (about 11 s): forcing StartTime=now let the second start
            # race the first start's still-exiting step, and slurmd killed it ("Job credential revoked").
            state = job_field(job, "JobState")
            return state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

        wait_until(ended, "the job to end", log)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    text = log.read_text()
    assert job_field(job, "JobState") == "COMPLETED", text[-4000:]
    assert job_field(job, "Restarts") == "1"

    first, _, second = text.partition("SLURM_RESTART_COUNT=1")
    assert "SLURM_RESTART_COUNT=0" in first and second, text[-4000:]
    assert "got SIGUSR1" in first and "received SIGUSR1" in first
    stopped = int(re.search(r"stopped after step (\d+) on a signal", first).group(1))
    assert first.count(f"saved training state {out}/state/step_{stopped:09d}") == 1
    assert "requeueing job" in first and "training finished" not in first
    assert re.search(rf"resuming from {out}/state/step_{stopped:09d} \(step {stopped}\)", second)
    assert "training finished (exit 0)" in second

    best = load_best(out / "best_sc.pt")
    assert len(best["labels"]) == 6
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 24 and 0 <= results["test_acc"] <= 1
    assert load_state(list_states(out)[0])["progress"]["global_step"] == 24

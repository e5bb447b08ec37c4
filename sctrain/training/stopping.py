"""Graceful stop on SIGTERM / SIGUSR1: finish the step, save once, exit with :data:`EXIT_PREEMPTED`;
on Ctrl-C (SIGINT) the same with :data:`EXIT_INTERRUPTED`, and a second Ctrl-C stops at once, unsaved.

Slurm sends USR1 (``--signal=B:USR1@N``, forwarded by ``slurm/train.sbatch``) before the time limit and
TERM on preemption or ``scancel``. Ranks can receive the signal at different steps, so the loop asks
:meth:`GracefulStop.should_stop` after every step; one tiny all-reduce makes every rank agree, so all of
them stop after the same step. The all-reduce runs on the host and its answer is read one step later
(:class:`sctrain.training.distributed.LaggedVote`), so the check waits neither for the GPU nor for the
network: with several processes the stop comes one step after the signal.

A signal sent to the whole process group (``kill -- -PGID``, Ctrl-C in a terminal) also reaches the
DataLoader workers; they ignore it (:func:`worker_init`), so the main process decides, and saves.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
from typing import Optional

from sctrain.training import rundir

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; slurm/train.sbatch requeues the job on it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C: not requeued
PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """Under torchrun, get SIGKILL when the launcher dies (Linux only).

    torchrun starts each worker in its own session, so a launcher killed with SIGKILL (OOM killer, a node
    agent, ``kill -9``) leaves its workers running; they would keep writing into output_dir next to the
    restarted job.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not hasattr(os, "getppid"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def worker_init(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """In each DataLoader worker: leave stop signals to the main process, which finishes its step and saves.

    Torch's workers die of SIGTERM, and of SIGINT quietly; the main process then fails on the lost
    worker (a traceback, no state) instead of stopping gracefully."""
    for name in (*GracefulStop.SIGNALS, "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    rundir.release()  # the inherited copy of the run folder's lock: see release()


class GracefulStop:
    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        from sctrain.training.distributed import LaggedVote
        self.received: Optional[str] = None
        self._previous: dict = {}
        self._vote = LaggedVote()

    def install(self) -> "GracefulStop":
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        die_with_launcher()
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("received %s: stopping after this step and saving the training state%s", name,
                        " (Ctrl-C again stops at once, without saving)" if name == "SIGINT" else "")
        elif name == "SIGINT":  # the user insists
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.received == "SIGINT" else EXIT_PREEMPTED

    def should_stop(self, accelerator) -> bool:
        """True on every rank, at the same step, once any rank has received a stop signal (a collective:
        every rank asks after every step; with several processes the answer is one step late)."""
        return self._vote(accelerator, self.received is not None)

"""Graceful stop on SIGTERM / SIGUSR1: finish the step, save once, exit with :data:`EXIT_PREEMPTED`.

Slurm sends USR1 (``--signal=B:USR1@N``, forwarded by ``slurm/train.sbatch``) before the time limit and
TERM on preemption or ``scancel``. Ranks can receive the signal at different steps, so the loop asks
:meth:`GracefulStop.should_stop` after every step; one tiny all-reduce makes every rank agree, so all of
them stop after the same step. The all-reduce runs on the host (:func:`sctrain.training.distributed.any_rank_failed`),
so the check never makes the host wait for the GPU.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
from typing import Optional

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; slurm/train.sbatch requeues the job on it
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


class GracefulStop:
    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._previous: dict = {}

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
        if self.received is None:
            self.received = signal.Signals(signum).name
            log.warning("received %s: stopping after this step and saving the training state", self.received)

    def should_stop(self, accelerator) -> bool:
        """True on every rank once any rank has received a stop signal (a collective: every rank asks)."""
        from sctrain.training.distributed import any_rank_failed
        return any_rank_failed(accelerator, self.received is not None)

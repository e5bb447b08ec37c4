"""Graceful stop on SIGTERM / SIGUSR1: finish the step, save once, exit with :data:`EXIT_PREEMPTED`.

Slurm sends USR1 (``--signal=B:USR1@N``) before the time limit and TERM on preemption or ``scancel``.
Ranks can receive the signal at different steps, so the loop asks :meth:`GracefulStop.should_stop`, which
agrees across ranks with one tiny all-reduce per step: every rank then stops after the same step.
"""
from __future__ import annotations

import logging
import signal
from typing import Optional

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; the sbatch script requeues on it


class GracefulStop:
    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._previous = {}

    def install(self) -> "GracefulStop":
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
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
        from .runtime import any_rank_failed
        return any_rank_failed(accelerator, self.received is not None)

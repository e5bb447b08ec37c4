"""A Trainer built in the test's own process, for tests that drive its epochs and steps directly."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def trainer_for(cfg):
    """The Trainer of ``cfg``; closed, and its run folder's lock released, when the block ends."""
    from sctrain.training import rundir
    from sctrain.training.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        yield trainer
    finally:
        trainer.close()
        rundir.release()

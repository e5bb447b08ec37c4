"""Training in the test's own process: a Trainer to drive step by step, or a whole run on one thread."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def trainer_for(cfg):
    """The Trainer of ``cfg``; closed, and its run folder's lock released, when the block ends."""
    from sctrain.training.trainer import Trainer

    with Trainer(cfg) as trainer:
        yield trainer


def train_on_one_thread(cfg) -> dict:
    """``train(cfg)`` on one thread, as the session fixtures train their models: on a shared, oversubscribed CI
    machine OpenMP's parallel regions stall on descheduled threads and take several times longer."""
    from sctrain.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)

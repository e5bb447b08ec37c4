"""In-process training on one thread, as the session fixtures train their models.

On a shared, oversubscribed CI machine OpenMP's parallel regions stall on descheduled threads and take
several times longer than a single thread."""
from __future__ import annotations

import torch


def train_on_one_thread(cfg) -> dict:
    from sctrain.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)

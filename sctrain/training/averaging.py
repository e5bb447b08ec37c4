"""``train.ema_decay``: an exponential moving average of the weights, updated after every optimizer step.

The average is torch's :class:`~torch.optim.swa_utils.AveragedModel` with :func:`get_ema_multi_avg_fn`. Only the
parameters are averaged; BatchNorm's running statistics (and every other buffer) are copied from the trained
model, since an average of running averages taken under other weights describes neither model. The averaged
network is a plain copy of the model's own class, so ``best_sc.pt`` written from it is the same plain state dict
the inference loader reads.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sctrain.artifacts.best import plain_state_dict


class WeightAverage:
    """The EMA of one model's weights. Not a ``Module`` on purpose: the training state stores it through
    :meth:`state_dict`, which keeps the update count (a resumed run must not restart the average from a copy)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    @property
    def model(self) -> torch.nn.Module:
        """The averaged network (the model's class, its buffers the trained model's)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """After an optimizer step: fold the new weights in (the first update copies them), copy the buffers."""
        self.averaged.update_parameters(model)  # the host waits for the device: it reads n_averaged, once a step
        self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: torch.nn.Module) -> None:
        """Take the model's buffers (after a cross-rank sync of BatchNorm statistics, say)."""
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def state_dict(self) -> dict:
        return {"weights": plain_state_dict(self.model), "n_averaged": int(self.averaged.n_averaged),
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        if float(state["decay"]) != self.decay:
            raise ValueError(f"the state averages with train.ema_decay={state['decay']}, this run with {self.decay}")
        self.model.load_state_dict(state["weights"])
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))

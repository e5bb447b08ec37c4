"""Distributed evaluation: each rank scores a disjoint shard, one all-reduce sums the confusion matrices.

Summing per-rank confusion counts (instead of gathering padded predictions) makes the result exactly a
single-process evaluation: no clip is duplicated or missed, whatever the world size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class EvalResult:
    labels: list[str]
    confusion: np.ndarray  # [true, predicted] counts, int64
    loss: float

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.count))

    @property
    def per_class_accuracy(self) -> dict[str, Optional[float]]:
        totals = self.confusion.sum(axis=1)
        return {name: (float(self.confusion[i, i] / totals[i]) if totals[i] else None)
                for i, name in enumerate(self.labels)}

    def summary(self) -> dict:
        return {"loss": self.loss, "acc": self.accuracy, "count": self.count,
                "per_class_acc": self.per_class_accuracy}


@torch.no_grad()
def evaluate(model: torch.nn.Module, frontend: torch.nn.Module, loader: torch.utils.data.DataLoader,
             labels: list[str], device: torch.device, autocast=None) -> EvalResult:
    """Score this rank's shard and sum with the other ranks. Call on every rank (it has a collective).

    ``model`` should be the unwrapped module: evaluation needs no DDP hooks, and ranks may run a
    different number of batches.
    """
    was_training = model.training, frontend.training
    model.eval()
    frontend.eval()
    num_classes = len(labels)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for audio, target in loader:
        audio = audio.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
            logits = model(frontend(audio))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        confusion += torch.bincount(target * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sum)
    model.train(was_training[0])
    frontend.train(was_training[1])
    matrix = confusion.view(num_classes, num_classes).cpu().numpy()  # host sync: once per evaluation
    return EvalResult(labels=list(labels), confusion=matrix, loss=float(loss_sum.item() / max(1, matrix.sum())))

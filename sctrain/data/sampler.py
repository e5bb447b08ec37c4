"""One seeded index stream per epoch, split into equal disjoint shards, one per rank.

The stream depends only on (labels, seed, epoch, balanced), never on the world size: rank ``r`` of ``W``
takes positions ``r, r+W, r+2W, ...``. So global step ``k`` of a W-process run with per-rank batch B sees
exactly the clips of step ``k`` of a 1-process run with batch W*B, which makes runs comparable across
world sizes and lets a job resume mid-epoch by skipping what each rank has already consumed.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch.utils.data


def class_balanced_weights(labels: np.ndarray, num_classes: int, groups: Optional[np.ndarray] = None,
                           share: Optional[float] = None) -> np.ndarray:
    """Per-clip weights that give every present class the same total probability.

    With ``groups`` (0 or 1 per clip) and ``share``, group 1 takes ``share`` of each class's probability
    wherever the class has clips of both groups (``data.extra_share``: synthetic against real clips)."""
    labels = np.asarray(labels, dtype=np.int64)
    if groups is None or share is None:
        cells, n_cells = labels, num_classes
        target = np.ones(num_classes)
    else:
        cells, n_cells = labels * 2 + np.asarray(groups, dtype=np.int64), 2 * num_classes
        present = np.bincount(cells, minlength=n_cells).reshape(num_classes, 2) > 0
        both = present.all(axis=1)
        target = np.where(both[:, None], [1.0 - share, share], present.astype(np.float64)).reshape(-1)
    counts = np.bincount(cells, minlength=n_cells).astype(np.float64)
    per_cell = np.divide(target, counts, out=np.zeros_like(counts), where=counts > 0)
    weights = per_cell[cells]
    return weights / weights.sum()


class BalancedDistributedSampler(torch.utils.data.Sampler[int]):
    """Epoch-aware, resumable sampler over ``len(labels)`` clips, sharded across ``num_replicas`` ranks.

    ``balanced=True`` draws the stream with replacement from class-balanced weights (the distributed
    equivalent of ``WeightedRandomSampler``); ``balanced=False`` uses a seeded permutation. The stream
    has ``len(labels)`` entries, extended with its own continuation until it splits evenly, so every rank
    runs the same number of steps.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, num_classes: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, balanced: bool = True, groups: Optional[np.ndarray] = None,
                 group_share: Optional[float] = None) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) == 0:
            raise ValueError("cannot sample from an empty split")
        self.num_classes = num_classes
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0
        self.start = 0  # positions of this rank's shard already consumed (for mid-epoch resume)
        self._cdf = (np.cumsum(class_balanced_weights(self.labels, num_classes, groups, group_share)) if balanced
                     else None)

    @property
    def shard_size(self) -> int:
        return math.ceil(len(self.labels) / self.num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's stream; ``start`` skips that many of this rank's positions (resume)."""
        if not 0 <= start <= self.shard_size:
            raise ValueError(f"start {start} is outside this rank's shard of {self.shard_size}")
        self.epoch = epoch
        self.start = start

    def stream(self, length: int | None = None) -> np.ndarray:
        """The epoch's global index stream: the first ``len(labels)`` entries are world-size independent."""
        length = len(self.labels) if length is None else length
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, 0x5C]))
        if self.balanced:
            # Inverse-CDF draws are prefix-stable: a longer stream extends a shorter one.
            u = rng.random(length)
            return np.minimum(np.searchsorted(self._cdf, u * self._cdf[-1], side="right"), len(self.labels) - 1)
        perm = rng.permutation(len(self.labels))
        return np.resize(perm, length)  # wraps around the permutation to pad

    def shard(self) -> np.ndarray:
        total = self.shard_size * self.num_replicas
        return self.stream(total)[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:].tolist())

    def __len__(self) -> int:
        return self.shard_size - self.start

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "balanced": self.balanced}

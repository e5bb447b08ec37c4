"""A ring of batch-sized shared-memory slots that loader workers write batches into, allocated once.

A DataLoader worker normally puts every batch into new shared memory: a new /dev/shm file, a page fault
per 4 KiB page as the worker writes it and again as the trainer maps and reads it, then an unmap, and a
file descriptor handed over a socket per tensor. For int16 clips that is most of a worker's CPU time
(measured: 9 ms per batch of 128 clips, against 1 ms for the copy itself), and on a small machine it is
taken from the cores the front end runs on.

With a ring, each worker cycles through its own slots of one shared tensor that the trainer's process
allocated before the workers started, and sends back only the slot's number (a :class:`RingBatch`, a few
bytes when pickled); unpickled in the trainer's process it becomes ``(audio, labels)`` again, ``audio``
a view of the trainer's own, already-mapped ring. Nothing is allocated, mapped or faulted per batch.

Reuse is safe because the DataLoader bounds how far workers run ahead: a worker is given a new batch
only when the consumer takes one, and never holds more than ``prefetch_factor`` unreturned batches, so
with ``prefetch_factor + SLACK_SLOTS`` slots per worker a slot is rewritten only after the consumer has
drawn at least ``SLACK_SLOTS`` later batches. The consumer may therefore keep the current and the
previous batch; code that keeps batches longer must copy them (the trainer and benchmark never do).
"""
from __future__ import annotations

import itertools
import os
import weakref

import numpy as np
import torch

# Batches the consumer may hold beyond the DataLoader's prefetch (the current one and the previous one).
SLACK_SLOTS = 2

# The rings of this process by id, so a RingBatch unpickled here finds the memory its slot number means.
_RINGS: "weakref.WeakValueDictionary[str, BatchRing]" = weakref.WeakValueDictionary()
_ids = itertools.count()


class BatchRing:
    """``workers x (prefetch_factor + SLACK_SLOTS)`` slots of ``[batch_size, *sample_shape]`` in shared memory."""

    def __init__(self, batch_size: int, sample_shape: tuple[int, ...], dtype: torch.dtype, workers: int,
                 prefetch_factor: int) -> None:
        if workers < 1:
            raise ValueError("a BatchRing serves DataLoader workers: workers must be >= 1")
        self.per_worker = prefetch_factor + SLACK_SLOTS
        self.slots = torch.empty(workers * self.per_worker, batch_size, *sample_shape, dtype=dtype).share_memory_()
        self.id = f"{os.getpid()}-{next(_ids)}"
        _RINGS[self.id] = self
        self._written = 0  # batches written by this process; each worker process counts its own

    def __setstate__(self, state: dict) -> None:  # a worker started by spawn: known there by the same id
        self.__dict__.update(state)
        _RINGS[self.id] = self

    def claim(self, rows: int, worker_id: int) -> tuple[int, torch.Tensor]:
        """The next slot of worker ``worker_id``: its number and a ``[rows, *sample_shape]`` view to write into."""
        if rows > self.slots.shape[1]:
            raise ValueError(f"batch of {rows} rows does not fit the ring's {self.slots.shape[1]}-row slots")
        slot = worker_id * self.per_worker + self._written % self.per_worker
        self._written += 1
        return slot, self.slots[slot, :rows]

    def batch(self, slot: int, rows: int, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(audio, labels)`` of a written slot: a view of the slot's first ``rows`` rows, and the labels."""
        return self.slots[slot, :rows], torch.from_numpy(labels)

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a view of this process's mapping of the ring (no copy, no new mapping)."""
        return tensor.untyped_storage().data_ptr() == self.slots.untyped_storage().data_ptr()


class RingBatch(tuple):
    """``(audio, labels)`` written into a ring slot; pickles as the slot's number and the labels only."""

    def __new__(cls, ring: BatchRing, slot: int, rows: int, labels: np.ndarray) -> "RingBatch":
        batch = super().__new__(cls, ring.batch(slot, rows, labels))
        batch.where = (ring.id, slot, rows, labels)
        return batch

    def __reduce__(self):
        return _unpickle_ring_batch, self.where


def _unpickle_ring_batch(ring_id: str, slot: int, rows: int, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    ring = _RINGS.get(ring_id)
    if ring is None:
        raise RuntimeError(f"received a batch of ring {ring_id}, which this process does not hold (a RingBatch "
                           "only travels from a DataLoader worker to the process that made its loader)")
    return ring.batch(slot, rows, labels)

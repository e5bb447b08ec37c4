"""A ring of batch-sized shared-memory slots that loader workers write batches into, allocated once.

A DataLoader worker normally puts every batch into new shared memory: a new /dev/shm file, a page fault
per 4 KiB page as the worker writes it and again as the trainer maps and reads it, then an unmap. For
int16 clips that is most of a worker's CPU time (measured: 9 ms per batch of 128 clips, against 1 ms for
the copy itself), and on a small machine it is taken from the cores the front end runs on.

With a ring, each worker cycles through its own slots of one shared tensor that the trainer's process
allocated before the workers started. A batch still travels as an ordinary tensor (a view of its slot);
because the trainer's process registers the ring with torch's cache of received shared storages, the
view it receives resolves to its own, already-mapped ring: nothing is allocated, mapped or faulted per
batch. Where that registration is not possible (another sharing strategy, a torch without the cache),
batches arrive as separately mapped views of the same memory: still correct, just slower.

Reuse is safe because the DataLoader bounds how far workers run ahead: a worker is given a new batch
only when the consumer takes one, and never holds more than ``prefetch_factor`` unreturned batches, so
with ``prefetch_factor + SLACK_SLOTS`` slots per worker a slot is rewritten only after the consumer has
drawn at least ``SLACK_SLOTS`` later batches. The consumer may therefore keep the current and the
previous batch; code that keeps batches longer must copy them (the trainer and benchmark never do).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# Batches the consumer may hold beyond the DataLoader's prefetch (the current one and the previous one).
SLACK_SLOTS = 2


class BatchRing:
    """``workers x (prefetch_factor + SLACK_SLOTS)`` slots of ``[batch_size, *sample_shape]`` in shared memory."""

    def __init__(self, batch_size: int, sample_shape: tuple[int, ...], dtype: torch.dtype, workers: int,
                 prefetch_factor: int) -> None:
        if workers < 1:
            raise ValueError("a BatchRing serves DataLoader workers: workers must be >= 1")
        self.per_worker = prefetch_factor + SLACK_SLOTS
        self.slots = torch.empty(workers * self.per_worker, batch_size, *sample_shape, dtype=dtype).share_memory_()
        self.registered = _resolve_received_views_here(self.slots)
        self._written = 0  # batches written by this process; each worker process counts its own

    def claim(self, rows: int, worker_id: int) -> torch.Tensor:
        """The next slot of worker ``worker_id``, as a ``[rows, *sample_shape]`` tensor to write a batch into."""
        if rows > self.slots.shape[1]:
            raise ValueError(f"batch of {rows} rows does not fit the ring's {self.slots.shape[1]}-row slots")
        slot = worker_id * self.per_worker + self._written % self.per_worker
        self._written += 1
        return self.slots[slot, :rows]

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a view of this process's mapping of the ring (no copy, no new mapping)."""
        return tensor.untyped_storage().data_ptr() == self.slots.untyped_storage().data_ptr()


def _resolve_received_views_here(tensor: torch.Tensor) -> bool:
    """Enter ``tensor``'s shared storage in torch's cache of received storages, keyed by its shm file.

    ``torch.multiprocessing`` looks every received file-descriptor storage up in that cache first, so a
    worker's view of the ring is rebuilt on this process's existing mapping instead of a new one.
    """
    try:
        from torch.multiprocessing import reductions

        storage = tensor.untyped_storage()
        fd, _ = storage._share_fd_cpu_()  # the storage's own descriptor (already shared): not ours to close
        reductions.shared_cache[reductions.fd_id(fd)] = reductions.StorageWeakRef(storage)
        return True
    except (AttributeError, RuntimeError, OSError) as e:  # other platforms, strategies or torch versions
        log.debug("batch ring: received batches will be mapped one by one (%s)", e)
        return False

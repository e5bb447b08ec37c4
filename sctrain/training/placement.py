"""Where the trainer's batches come from: loader workers reading the memory-mapped cache, or splits resident
on the training device (``data.placement``).

Both give the same batches in the same order: consecutive chunks of the sharded sampler's stream for
training, this rank's ``rank, rank + W, ...`` clips for evaluation. With ``device`` placement the int16
splits are copied to the device once and a step's batch is one ``index_select`` there: no workers, no
host gather, no pinned copy per batch. The epoch's indices travel to the device once per epoch.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, Optional

import numpy as np
import torch

from sctrain.config import DataConfig
from sctrain.data.dataset import PackedDataset, PackedSplit, clip_loader, eval_loader
from sctrain.data.sampler import BalancedDistributedSampler
from sctrain.training.stopping import GracefulStop, worker_init
from sctrain.utils import first_line

log = logging.getLogger(__name__)

# Rows copied to the device at a time: bounds the host memory the copy needs beside the memory map.
COPY_ROWS = 4096
SPLITS_ON_DEVICE = ("train", "validation", "test")

Batch = tuple[torch.Tensor, torch.Tensor]


def packed_bytes(data: PackedDataset) -> int:
    """Bytes the audio and labels of every split take once copied to a device."""
    return sum(data.split(s).audio.nbytes + len(data.split(s)) * 8 for s in SPLITS_ON_DEVICE)


def choose_placement(cfg: DataConfig, device: torch.device, data: PackedDataset) -> tuple[str, str]:
    """``(placement, why)``: ``auto`` resolved to ``device`` on a GPU the splits fit, else ``loader``."""
    size_gb = packed_bytes(data) / 1e9
    if cfg.placement != "auto":
        return cfg.placement, f"data.placement={cfg.placement} ({size_gb:.2f} GB of packed splits)"
    if device.type != "cuda":
        return "loader", f"data.placement=auto on {device.type}: DataLoader workers (device placement is for GPUs)"
    free, _ = torch.cuda.mem_get_info(device)
    budget_gb = cfg.device_memory_share * free / 1e9
    if size_gb <= budget_gb:
        return "device", (f"data.placement=auto: the packed splits ({size_gb:.2f} GB) fit in "
                          f"{cfg.device_memory_share:.0%} of the GPU's {free / 1e9:.1f} GB free")
    return "loader", (f"data.placement=auto: the packed splits ({size_gb:.2f} GB) exceed {cfg.device_memory_share:.0%} "
                      f"of the GPU's {free / 1e9:.1f} GB free (data.device_memory_share)")


class StopSafeBatches:
    """An epoch's loader batches, for a graceful stop that a dying loader worker must not spoil.

    Workers ignore stop signals (:func:`worker_init`), but one killed with its process group right after
    its start, before it could, dies; torch reports that from the loader, between steps, so the last
    finished step is whole: the epoch then ends with ``worker_lost`` and the caller saves it.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, stop: GracefulStop, world: int) -> None:
        self.batches, self.stop, self.world = iter(loader), stop, world
        self.worker_lost = False

    def __iter__(self) -> "StopSafeBatches":
        return self

    def __next__(self) -> Batch:
        try:
            return next(self.batches)
        except RuntimeError as e:
            # With several ranks the others are inside the next step's collectives: no saving alone.
            if self.stop.received is None or self.world > 1 or "DataLoader worker" not in str(e):
                raise
            log.warning("a DataLoader worker died during the stop (%s)", first_line(e))
            self.worker_lost = True
            raise StopIteration from None

    def close(self) -> None:
        """Shut the workers down now (not at garbage collection); their exit then raises nothing."""
        shutdown_workers = getattr(self.batches, "_shutdown_workers", None)
        if shutdown_workers is not None:
            shutdown_workers()


class LoaderBatches:
    """Training batches from one DataLoader whose workers live across epochs (no restart per epoch)."""

    def __init__(self, split: PackedSplit, batch_size: int, sampler: BalancedDistributedSampler, workers: int,
                 drop_last: bool, pin_memory: bool, stop: GracefulStop, world: int) -> None:
        # A private generator keeps the loader from drawing on the global RNG (which augmentation uses and
        # checkpoints restore): resumed and uninterrupted runs then see identical random streams.
        self.loader = clip_loader(split, batch_size, sampler, workers, drop_last=drop_last, pin_memory=pin_memory,
                                  generator=torch.Generator(), worker_init_fn=worker_init, persistent_workers=True)
        self.stop, self.world = stop, world
        self._current: Optional[StopSafeBatches] = None

    def epoch(self) -> StopSafeBatches:
        """This epoch's batches, in the sampler's order from its ``start`` (set it first)."""
        self._current = StopSafeBatches(self.loader, self.stop, self.world)
        return self._current

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


class ResidentSplit:
    """A packed split copied to ``device`` once; batches are gathered there by index."""

    def __init__(self, split: PackedSplit, device: torch.device) -> None:
        self.name, self.device = split.name, device
        self.audio = copy_rows_to(split.audio, device)
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, indices: np.ndarray, batch_size: int, drop_last: bool = False) -> Iterator[Batch]:
        """Consecutive ``batch_size`` chunks of ``indices``, as a DataLoader over them would give."""
        index = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
        if self.device.type == "cuda":
            index = index.pin_memory()
        index = index.to(self.device, non_blocking=True)  # one copy per pass, not per batch
        end = len(index) // batch_size * batch_size if drop_last else len(index)
        for start in range(0, end, batch_size):
            rows = index[start:start + batch_size]
            yield self.audio.index_select(0, rows), self.labels.index_select(0, rows)


def copy_rows_to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` (a memory map, say) as a tensor on ``device``, copied in ``COPY_ROWS`` chunks."""
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    for start in range(0, len(array), COPY_ROWS):
        out[start:start + COPY_ROWS].copy_(torch.from_numpy(np.array(array[start:start + COPY_ROWS])))
    return out


class DeviceBatches:
    """Training batches gathered on the device from the resident training split."""

    def __init__(self, split: ResidentSplit, batch_size: int, sampler: BalancedDistributedSampler,
                 drop_last: bool) -> None:
        self.split, self.batch_size, self.sampler, self.drop_last = split, batch_size, sampler, drop_last
        self.worker_lost = False  # no workers: the trainer's loader-path check stays false

    def epoch(self) -> "DeviceBatches":
        return self

    def __iter__(self) -> Iterator[Batch]:
        shard = self.sampler.shard()[self.sampler.start:]
        return self.split.batches(shard, self.batch_size, self.drop_last)

    def close(self) -> None:
        pass


class Placement:
    """The trainer's batch sources for one placement: training batches and each split's evaluation batches."""

    def __init__(self, kind: str, data: PackedDataset, device: torch.device) -> None:
        self.kind, self.data, self.device = kind, data, device
        self._resident: dict[str, ResidentSplit] = {}
        if kind == "device":
            t0 = time.perf_counter()
            for name in SPLITS_ON_DEVICE:
                self.resident(name)
            log.info("packed splits copied to %s in %.1f s", device, time.perf_counter() - t0)

    def resident(self, split: str) -> ResidentSplit:
        if split not in self._resident:
            self._resident[split] = ResidentSplit(self.data.split(split), self.device)
        return self._resident[split]

    def train_batches(self, batch_size: int, sampler: BalancedDistributedSampler, drop_last: bool,
                      workers: int, pin_memory: bool, stop: GracefulStop, world: int):
        if self.kind == "device":
            return DeviceBatches(self.resident("train"), batch_size, sampler, drop_last)
        return LoaderBatches(self.data.split("train"), batch_size, sampler, workers, drop_last,
                             pin_memory and self.device.type == "cuda", stop, world)

    def eval_batches(self, split: str, batch_size: int, world: int, rank: int):
        """This rank's share of ``split`` (clips ``rank, rank + world, ...``), in batches."""
        if self.kind == "device":
            resident = self.resident(split)
            return resident.batches(np.arange(rank, len(resident), world), batch_size)
        return eval_loader(self.data.split(split), batch_size, world, rank, num_workers=0, pin_memory=False)

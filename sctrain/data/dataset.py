"""The read side of a packed cache: memory-mapped splits, batch datasets and the train / eval loaders.

:mod:`sctrain.data.pack` writes a cache once; every run after that only opens it here, which costs nothing
(the audio is memory-mapped), and loader workers gather each batch with one copy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: stale caches are not removed, so nothing needs holding
    fcntl = None
import numpy as np
import torch

from sctrain.audio.constants import CLIP_SAMPLES
from sctrain.data.ring import BatchRing, RingBatch
from sctrain.data.speechcommands import SPLITS


class PackedSplit:
    """One split of a packed cache; the audio is memory-mapped, so opening it costs nothing."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        self.labels: np.ndarray = np.load(self.folder / f"labels_{name}.npy")
        self._audio: Optional[np.ndarray] = None
        self._files: Optional[list[str]] = None

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = np.load(self.folder / f"audio_{self.name}.npy", mmap_mode="r")
        return self._audio

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._files = (self.folder / f"files_{self.name}.txt").read_text().splitlines()
        return self._files

    @property
    def offsets(self) -> np.ndarray:
        return np.load(self.folder / f"offsets_{self.name}.npy")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its data; DataLoader workers reopen the file instead.
        return {**self.__dict__, "_audio": None, "_files": None}


class PackedDataset:
    """A packed cache folder: label list, splits, background noise and the clips that were skipped."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.meta: dict = json.loads((self.cache_dir / "meta.json").read_text())
        self._in_use = _hold(self.cache_dir)  # while this object lives, remove_stale_caches leaves it alone
        self.labels: list[str] = list(self.meta["labels"])
        self.skipped: list[str] = list(self.meta["skipped"])
        self._splits: dict[str, PackedSplit] = {}
        self._background: Optional[np.ndarray] = None

    def split(self, name: str) -> PackedSplit:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = PackedSplit(self.cache_dir, name)
        return self._splits[name]

    @property
    def background(self) -> np.ndarray:
        if self._background is None:
            self._background = np.load(self.cache_dir / "background.npy")
        return self._background

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.meta['counts'][s]}" for s in SPLITS)
        return f"PackedDataset({self.cache_dir}, {len(self.labels)} labels, {sizes})"


# Batches each loader worker prepares ahead (DataLoader's default), passed explicitly: BatchRing is sized by it.
RING_PREFETCH = 2


class ClipDataset(torch.utils.data.Dataset):
    """Clips of a ``PackedSplit`` as int16 tensors; ``__getitems__`` reads a whole batch at once.

    ``ring``: in DataLoader workers, batches are written into its shared-memory slots (see
    :mod:`sctrain.data.ring`) instead of new shared memory per batch.
    """

    def __init__(self, split: PackedSplit, ring: Optional[BatchRing] = None):
        self.split = split
        self.ring = ring

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.split.audio[i])), int(self.split.labels[i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        labels = np.ascontiguousarray(self.split.labels[idx])
        worker = torch.utils.data.get_worker_info()
        if worker is not None and self.ring is not None:
            slot, audio = self.ring.claim(len(idx), worker.id)
        else:
            slot, audio = None, torch.empty((len(idx), CLIP_SAMPLES), dtype=torch.int16)
        # One copy, memmap rows straight into the batch (fancy indexing would copy twice).
        np.take(self.split.audio, idx, axis=0, out=audio.numpy())
        if slot is None:
            return audio, torch.from_numpy(labels)
        return RingBatch(self.ring, slot, len(idx), labels)


def collate_batch(batch):
    """DataLoader ``collate_fn`` for ``ClipDataset``: ``__getitems__`` already returns the batch."""
    return batch


def clip_loader(split: PackedSplit, batch_size: int, sampler, workers: int, drop_last: bool = False,
                pin_memory: bool = False, generator: Optional[torch.Generator] = None,
                worker_init_fn=None, persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """DataLoader of ``(int16 [B, CLIP_SAMPLES], int64 [B])`` batches of ``split`` in ``sampler``'s order.

    With workers, batches come through a :class:`BatchRing` (no new shared memory per batch): a batch is
    valid until two more have been drawn, which a training loop that consumes each batch satisfies.
    ``persistent_workers``: keep the workers (and their open memory maps) from one epoch to the next.
    """
    ring = BatchRing(batch_size, (CLIP_SAMPLES,), torch.int16, workers, RING_PREFETCH) if workers > 0 else None
    return torch.utils.data.DataLoader(
        ClipDataset(split, ring), batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate_batch, drop_last=drop_last, pin_memory=pin_memory, generator=generator,
        persistent_workers=persistent_workers and workers > 0, prefetch_factor=RING_PREFETCH if workers > 0 else None,
        worker_init_fn=worker_init_fn)


def _hold(folder: Path):
    """A shared lock on ``folder/meta.json``, held while the returned file stays open (None without flock)."""
    if fcntl is None:
        return None
    f = open(folder / "meta.json", "rb")
    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # a cleaner holds it this instant: it is deleting a cache nothing should be reading
        pass
    return f


class EvalShard(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank+W, ...`` of a split: disjoint across ranks, unequal lengths allowed."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_loader(split: PackedSplit, batch_size: int, num_replicas: int, rank: int,
                num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    # A private generator: without one, each DataLoader iterator draws its base seed from the global RNG,
    # and an evaluation that only an interrupted run makes (a train.max_steps stop) would shift the
    # augmentation draws of the steps after it, so the resumed run would no longer match an uninterrupted one.
    return torch.utils.data.DataLoader(
        ClipDataset(split), batch_size=batch_size, sampler=EvalShard(len(split), num_replicas, rank),
        num_workers=num_workers, collate_fn=collate_batch, pin_memory=pin_memory, generator=torch.Generator())

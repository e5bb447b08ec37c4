"""The training-state checkpointer: called every step, it decides itself when to save (torchtitan style).

Every rank takes part (RNG states are gathered from all ranks), only the main process writes.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from sctrain.artifacts.best import plain_state_dict
from sctrain.artifacts.files import CheckpointError
from sctrain.training.checkpoint import files as checkpoint
from sctrain.utils import first_line

log = logging.getLogger(__name__)


@dataclass
class Progress:
    epoch: int = 0            # epoch in progress (or next to start)
    step_in_epoch: int = 0    # optimizer steps done in that epoch
    global_step: int = 0      # optimizer steps done in total
    best_val_acc: float = -1.0  # of the best checkpoint (the highest, unless chosen by detection)
    best_epoch: int = -1
    best_keywords_found: float = -1.0  # kws.select_by=detection: of the best checkpoint; -1 before the first


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's: one device per process
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(world_size: int) -> list[dict]:
    if world_size == 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


class Checkpointer:
    def __init__(self, output_dir: str | Path, every_steps: int, keep_last: int, is_writer: bool,
                 world_size: int, rank: int, global_batch: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.is_writer = is_writer
        self.world_size = world_size
        self.rank = rank
        self.global_batch = global_batch  # clips per optimizer step over all ranks (maps positions on resume)
        self.last_saved: Optional[tuple] = None  # (epoch, step_in_epoch, global_step) of the last save

    def due(self, progress: Progress) -> bool:
        return self.every_steps > 0 and progress.global_step % self.every_steps == 0

    def save(self, progress: Progress, parts: dict[str, Any], extra: Optional[dict] = None) -> None:
        """Save the full state now; a collective, so every rank calls it at the same step."""
        key = (progress.epoch, progress.step_in_epoch, progress.global_step)
        if key == self.last_saved:
            return
        rngs = gather_rng_states(self.world_size)
        if self.is_writer:
            payload = {"progress": asdict(progress), "world_size": self.world_size, "global_batch": self.global_batch,
                       "rng": rngs, **(extra or {})}
            for name, part in parts.items():
                payload[name] = (plain_state_dict(part) if isinstance(part, torch.nn.Module)
                                 else part.state_dict())
            path = checkpoint.save_state(self.output_dir, progress.global_step, payload, self.keep_last)
            log.info("saved training state %s", path)
        if self.world_size > 1:
            # Nobody runs ahead (or exits, after a stop signal) while rank 0 still writes: a launcher that sees
            # one process leave tears the others down.
            dist.barrier()
        self.last_saved = key

    def restore(self, state: dict, parts: dict[str, Any], path: Any = "training state",
                steps_per_epoch: int = 0) -> Progress:
        """Load a state saved by :meth:`save` into ``parts``; returns where to continue."""
        for name, part in parts.items():
            if name not in state:
                raise CheckpointError(f"{path} lacks '{name}'")
            target = getattr(part, "_orig_mod", part)
            target = getattr(target, "module", target)
            try:
                target.load_state_dict(state[name])
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                reason = first_line(e, limit=200)
                raise CheckpointError(
                    f"{path}: its {name} does not fit this run's config ({reason}); resume it with its own "
                    "config, or start over with train.resume=never or another output_dir") from None
        progress = Progress(**state["progress"])
        same_layout = state.get("world_size") == self.world_size and len(state.get("rng", [])) == self.world_size
        if same_layout:
            set_rng_state(state["rng"][self.rank])
        else:
            log.warning("resuming with %d processes from a state saved with %s: RNG streams restart, so the "
                        "run is no longer bitwise identical to an uninterrupted one", self.world_size,
                        state.get("world_size"))
            torch.manual_seed(int(state["progress"]["global_step"]) * 1000 + self.rank)
        saved_batch = int(state.get("global_batch") or 0)
        if saved_batch and self.global_batch and saved_batch != self.global_batch and steps_per_epoch:
            progress = self._remap(progress, saved_batch, steps_per_epoch, parts)
        self.last_saved = (progress.epoch, progress.step_in_epoch, progress.global_step)
        return progress

    def _remap(self, progress: Progress, saved_batch: int, steps_per_epoch: int, parts: dict[str, Any]) -> Progress:
        """A different global batch (node count): keep the position in the epoch's clip stream, and count
        steps (which drive the LR schedule) in the new step size."""
        clips_done = progress.step_in_epoch * saved_batch
        progress.step_in_epoch = min(steps_per_epoch, clips_done // self.global_batch)
        progress.global_step = progress.epoch * steps_per_epoch + progress.step_in_epoch
        scheduler = parts.get("scheduler")
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.last_epoch = progress.global_step
            for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(progress.global_step)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        log.warning("the state was saved with %d clips per step, this run takes %d: continuing at epoch %d, "
                    "step %d of %d", saved_batch, self.global_batch, progress.epoch + 1, progress.step_in_epoch,
                    steps_per_epoch)
        return progress

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

from . import checkpoint

log = logging.getLogger(__name__)


@dataclass
class Progress:
    epoch: int = 0            # epoch in progress (or next to start)
    step_in_epoch: int = 0    # optimizer steps done in that epoch
    global_step: int = 0      # optimizer steps done in total
    best_val_acc: float = -1.0
    best_epoch: int = -1


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
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
                 world_size: int, rank: int) -> None:
        self.output_dir = Path(output_dir)
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.is_writer = is_writer
        self.world_size = world_size
        self.rank = rank
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
            payload = {"progress": asdict(progress), "world_size": self.world_size, "rng": rngs, **(extra or {})}
            for name, part in parts.items():
                payload[name] = (checkpoint.plain_state_dict(part) if isinstance(part, torch.nn.Module)
                                 else part.state_dict())
            path = checkpoint.save_state(self.output_dir, progress.global_step, payload, self.keep_last)
            log.info("saved training state %s", path)
        self.last_saved = key

    def restore(self, state: dict, parts: dict[str, Any]) -> Progress:
        """Load a state saved by :meth:`save` into ``parts``; returns where to continue."""
        for name, part in parts.items():
            if name not in state:
                raise checkpoint.CheckpointError(f"training state lacks '{name}'")
            target = getattr(part, "_orig_mod", part)
            target = getattr(target, "module", target)
            target.load_state_dict(state[name])
        if state.get("world_size") == self.world_size and len(state.get("rng", [])) == self.world_size:
            set_rng_state(state["rng"][self.rank])
        else:
            log.warning("resuming with %d processes from a state saved with %s: RNG streams restart, so the "
                        "run is no longer bitwise identical to an uninterrupted one", self.world_size,
                        state.get("world_size"))
            torch.manual_seed(int(state["progress"]["global_step"]) * 1000 + self.rank)
        progress = Progress(**state["progress"])
        self.last_saved = (progress.epoch, progress.step_in_epoch, progress.global_step)
        return progress

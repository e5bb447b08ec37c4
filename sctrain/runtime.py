"""The one place that decides device, precision and world size, and runs once-per-node work safely."""
from __future__ import annotations

import datetime
import logging
import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from .config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")


class OtherRankFailed(RuntimeError):
    """Raised on ranks whose peer hit an error; the peer already showed the message."""


def resolve_precision(requested: str) -> str:
    """``auto`` -> bf16 on a GPU that supports it, else fp32 ('no'); bf16 autocast on most CPUs is slow."""
    if requested != "auto":
        if requested in ("bf16", "fp16") and not torch.cuda.is_available():
            log.warning("train.precision=%s on a CPU: expect it to be much slower than fp32", requested)
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def env_rank() -> int:
    """This process's global rank from the launcher's environment (valid before any process group)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def make_accelerator(cfg: Config) -> Accelerator:
    precision = resolve_precision(cfg.train.precision)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=True)
    # A peer that died leaves the others in a collective; a bounded timeout turns a hang into an error.
    pg = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=30))
    accelerator = Accelerator(mixed_precision=precision, kwargs_handlers=[ddp, pg])
    if accelerator.device.type == "cpu":
        # Cores are shared between the processes on this node; oversubscription makes every rank slow.
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return accelerator


def any_rank_failed(accelerator: Accelerator, failed: bool) -> bool:
    """True on every rank when ``failed`` is true on any rank (a tiny all-reduce)."""
    if accelerator.num_processes == 1:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=accelerator.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def once_per_node(accelerator: Accelerator, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the node's main process first (download, packing), then on the others (cache hits).

    An error on the main process stops every rank (no hang until the collective timeout); only the rank
    that failed re-raises the real error, the others raise :class:`OtherRankFailed`.
    """
    result, error = None, None
    if accelerator.is_local_main_process:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below after telling the other ranks
            error = e
    if any_rank_failed(accelerator, error is not None):
        if error is not None:
            raise error
        raise OtherRankFailed("stopped because another rank failed")
    if not accelerator.is_local_main_process:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001
            error = e
    if any_rank_failed(accelerator, error is not None):
        if error is not None:
            raise error
        raise OtherRankFailed("stopped because another rank failed")
    return result

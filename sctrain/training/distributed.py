"""The one place that decides device, precision and world size, and runs once-per-node work safely.

Distributed policy, in one place:

- Launch: ``accelerate launch`` (which hands multi-process runs to torchrun), plain ``torchrun`` or Slurm's
  ``srun torchrun``. With several processes and no CUDA device the job runs on the CPU with gloo.
- BatchNorm statistics: DDP runs with ``broadcast_buffers=True``, so every training forward starts from rank
  0's running statistics; :func:`sync_buffers` copies rank 0's statistics to every rank before evaluation
  and saving, so all ranks evaluate and hold the same model. ``train.sync_bn=true`` instead computes the
  batch statistics over the global batch (identical on every rank, and exactly a one-process run's).
- Host-side agreement (a failed rank, a stop signal, waiting for once-per-node work) goes through a small
  gloo group: no GPU stream synchronisation per step, and its own long timeout for slow downloads.
"""
from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from sctrain.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

# A peer that died leaves the others in a collective; a bounded timeout turns a hang into an error (and
# torchrun's agent stops the remaining workers of a job as soon as one exits with an error).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
# Ranks wait this long for the node's main process to download and pack the dataset.
PREPARE_TIMEOUT = datetime.timedelta(hours=4)
DUMP_WEIGHTS_ENV = "SCTRAIN_DUMP_WEIGHTS_DIR"
# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

_control_group: Optional[dist.ProcessGroup] = None


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


def env_world_size() -> int:
    """Processes in the job, as torchrun (and accelerate launch, which uses it) announce it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_cores() -> int:
    """Cores this process may run on (a container's or Slurm's CPU set, not the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed tensor memory for reuse instead of returning it to the kernel.

    By default glibc serves blocks above 128 KiB (a threshold that adapts up to 32 MiB) with ``mmap`` and
    unmaps them on free, so the multi-MB temporaries of every batch are fresh pages: page faults, zeroing
    and TLB shootdowns cost the CPU front end about a third of its time (measured: 57 -> 38 ms per batch
    of 128). With these settings blocks up to 32 MiB come from the heap, which is not trimmed below 1 GiB
    of free space. Linux with glibc only; elsewhere, or if the call fails, nothing changes (returns False).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
                    and libc.mallopt(M_TOP_PAD, 64 << 20))
    except (OSError, AttributeError):
        return False


def make_accelerator(cfg: Config) -> Accelerator:
    precision = resolve_precision(cfg.train.precision)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=True)
    pg = InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)
    # Accelerate only forms a CPU (gloo) process group when told cpu=True: under torchrun on a machine
    # without CUDA it would otherwise run every rank as an independent one-process job, each writing
    # output_dir. One process keeps Accelerate's own choice (e.g. Apple's MPS).
    cpu = env_world_size() > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=[ddp, pg])
    if accelerator.device.type == "cpu":
        # Cores are shared between the processes on this node; oversubscription makes every rank slow.
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
        torch.set_num_threads(max(1, cpu_cores() // local))
        keep_freed_memory()  # the front end runs here, on the host: see the function
    if accelerator.num_processes > 1:
        global _control_group
        # Every rank creates it here, at the same point, as new_group requires.
        _control_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    return accelerator


def any_rank_failed(accelerator: Accelerator, failed: bool) -> bool:
    """True on every rank when ``failed`` is true on any rank (a one-number all-reduce on the host)."""
    if accelerator.num_processes == 1:
        return failed
    flag = torch.tensor([1 if failed else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(flag.item())


class LaggedVote:
    """An any-rank vote read one call late: each call starts this call's all-reduce on the host and returns
    the previous call's result, so no rank waits for a round trip (gloo between nodes costs a millisecond,
    a large share of a GPU step). Every rank calls it the same number of times, so all agree on the step."""

    def __init__(self) -> None:
        self._flag: Optional[torch.Tensor] = None
        self._work = None

    def __call__(self, accelerator: Accelerator, flag: bool) -> bool:
        if accelerator.num_processes == 1:
            return flag
        result = False
        if self._work is not None:
            self._work.wait()
            result = bool(self._flag.item())  # a host tensor: no device involved
        self._flag = torch.tensor([1 if flag else 0], dtype=torch.int32)
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=_control_group, async_op=True)
        return result


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


def global_sum(accelerator: Accelerator, value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over all ranks, detached (no gradient flows through other ranks' shares)."""
    value = value.detach()
    if accelerator.num_processes == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)  # on the training device: no host synchronisation
    return value


def sync_buffers(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    With ``broadcast_buffers=True`` DDP copies them at the start of each training forward, but the last
    forward of an epoch leaves each rank with statistics updated from its own batch. Rank 0's copy is the
    one checkpointed, so all ranks evaluate with it. A no-op on one process.
    """
    if accelerator.num_processes == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def weight_digest(model: torch.nn.Module) -> dict:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes) and of the whole state."""
    from sctrain.artifacts.best import plain_state_dict
    state = plain_state_dict(model)
    total, tensors = hashlib.sha256(), {}
    for name in sorted(state):
        t = state[name].contiguous()
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        tensors[name] = h.hexdigest()
        total.update(tensors[name].encode())
    return {"digest": total.hexdigest(), "tensors": tensors}


def dump_weight_digest(model: torch.nn.Module, rank: int, world_size: int) -> Optional[Path]:
    """Debug hook: with ``$SCTRAIN_DUMP_WEIGHTS_DIR`` set, each rank writes ``rank<R>.json`` there.

    Lets a test (or a worried user) check that all ranks ended with identical weights. Point it at a
    folder of its own, not at output_dir: only rank 0 writes into output_dir.
    """
    folder = os.environ.get(DUMP_WEIGHTS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "world_size": world_size, **weight_digest(model)}, indent=1))
    return path


def shutdown() -> None:
    """Tear the process groups down before the interpreter exits.

    Left to interpreter teardown, a rank whose peer already exited can abort (SIGABRT) in gloo's threads,
    which turns a clean one-line error into a crash report from the launcher.
    """
    global _control_group
    _control_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""data.placement: batches from loader workers or from splits resident on the device, and a training step that
reads nothing back from the device between log lines. (Bitwise equality of the two placements across a
SIGTERM and resume, with one and two processes, is in tests/test_resume.py.)"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from support import REPO, trainer_for
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from sctrain.audio import cpu_kernels
from sctrain.config import load_config
from sctrain.data.pack import load_dataset
from sctrain.training.placement import ResidentSplit, choose_placement, packed_bytes
from sctrain.training.trainer import Trainer

# 96 training clips of 6 words: 6 steps of 16 per epoch.
SMALL = ["model.kwsnet.width=8", "train.batch_size=16", "train.eval_batch_size=64", "train.checkpoint_every=0",
         "latency.enabled=false", "tracking.report=false", "tracking.log_examples=0", "tracking.mode=disabled"]


def small_config(root: Path, out: Path, *overrides: str):
    return load_config(REPO / "configs/debug.yaml", [f"data.root={root}", f"output_dir={out}", *SMALL, *overrides])


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}


def test_auto_placement_is_the_loader_on_a_cpu_and_explicit_values_win(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path)
    data = load_dataset(cfg.data)
    kind, why = choose_placement(cfg.data, torch.device("cpu"), data)
    assert kind == "loader" and "auto" in why
    expected = sum(data.split(s).audio.nbytes + 8 * len(data.split(s)) for s in ("train", "validation", "test"))
    assert packed_bytes(data) == expected
    device_cfg = small_config(synthetic_root, tmp_path, "data.placement=device").data
    assert choose_placement(device_cfg, torch.device("cpu"), data)[0] == "device"


def test_resident_split_gives_the_loaders_clips_in_order(synthetic_root, tmp_path):
    data = load_dataset(small_config(synthetic_root, tmp_path).data)
    split = data.split("train")
    resident = ResidentSplit(split, torch.device("cpu"))
    order = np.random.default_rng(0).permutation(len(split))
    batches = list(resident.batches(order, 40, drop_last=False))
    assert [len(b[1]) for b in batches] == [40, 40, len(split) - 80]
    assert [len(b[1]) for b in resident.batches(order, 40, drop_last=True)] == [40, 40]
    audio = torch.cat([b[0] for b in batches])
    assert audio.dtype == torch.int16 and torch.equal(audio, torch.from_numpy(np.asarray(split.audio)[order]))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(split.labels[order]))


def test_device_placement_matches_loader_workers_bitwise(synthetic_root, tmp_path):
    """One worker process (through the shared-memory batch ring) against the device gather: the same
    training, weight for weight, and the same evaluation."""
    results = {}
    for kind, workers in (("loader", 1), ("device", 0)):
        cfg = small_config(synthetic_root, tmp_path / kind, f"data.placement={kind}", f"data.num_workers={workers}")
        with trainer_for(cfg) as trainer:
            assert trainer.placement.kind == kind
            trainer.train_epoch(0)
            results[kind] = weights(trainer), trainer.evaluate("validation").confusion
    (w_loader, c_loader), (w_device, c_device) = results["loader"], results["device"]
    assert all(torch.equal(w_loader[k], w_device[k]) for k in w_loader)
    assert np.array_equal(c_loader, c_device)


def test_loader_workers_persist_across_epochs(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path, "data.placement=loader", "data.num_workers=1")
    with trainer_for(cfg) as trainer:
        pids = []
        for epoch in range(2):
            trainer.progress.step_in_epoch = 0
            trainer.train_epoch(epoch)
            pids.append([w.pid for w in trainer.batches.loader._iterator._workers])
        assert pids[0] == pids[1] and len(pids[0]) == 1
    assert not trainer.batches.loader._iterator._workers_status or \
        not any(trainer.batches.loader._iterator._workers_status)  # shut down with the run


class DeviceReads(TorchFunctionMode):
    """Records each call that copies the value of a *device* tensor to Python or the host: on a GPU each one
    makes the host wait for the device. Here the device is the CPU, so device tensors are tracked instead:
    the model's and front end's parameters and buffers, gradients, whatever ``.to(device)`` or a factory
    with ``device=`` makes, and everything computed from those. Host-side tensors (the loader's batch
    before its copy, the optimizer's step counters, generator seeds) stay untracked, as they would on a GPU.
    """

    READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu", "nonzero",
             "__array__"}

    def __init__(self, device: torch.device, modules) -> None:
        super().__init__()
        self.device, self.tracked, self.calls = device, set(), []
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                self._track(t)
            for p in module.parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(lambda param: self._track(param.grad))

    def _track(self, t) -> None:
        if isinstance(t, torch.Tensor) and id(t) not in self.tracked:
            self.tracked.add(id(t))
            weakref.finalize(t, self.tracked.discard, id(t))

    def _on_device(self, value) -> bool:
        if isinstance(value, (str, torch.device)):
            return torch.device(value) == self.device
        return isinstance(value, torch.Tensor) and id(value) in self.tracked

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs, _ = tree_flatten((args, kwargs))
        name = getattr(func, "__name__", "")
        if name in self.READS and args and self._on_device(args[0]):
            self.calls.append(name)
        out = func(*args, **kwargs)
        if any(self._on_device(x) for x in inputs if not isinstance(x, (str, torch.device))) or \
                self._on_device(kwargs.get("device", "meta")) or \
                (name in ("to", "cuda") and any(isinstance(x, (str, torch.device)) and self._on_device(x)
                                                for x in inputs)):
            for t in tree_flatten(out)[0]:
                self._track(t)
        return out


@pytest.mark.parametrize("placement", ["loader", "device"])
def test_training_reads_the_device_only_at_log_lines(synthetic_root, tmp_path, monkeypatch, placement):
    """With the PyTorch ops GPUs run (the CPU kernels off), MixUp and every augmentation on, an epoch of 6
    steps reads from the device only where it logs: at step 3 and at the epoch's end (log_every=3)."""
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "0")
    cfg = small_config(synthetic_root, tmp_path, f"data.placement={placement}", "data.num_workers=0",
                       "train.log_every=3", "augment.mixup_p=0.5", "augment.mask_p=1", "augment.noise_p=1",
                       "augment.shift_p=1")
    with trainer_for(cfg) as trainer:
        assert trainer.steps_per_epoch == 6
        trainer.train_step(*next(iter(trainer.batches.epoch())))  # first-call setup (noise bank) outside the count
        trainer.progress.step_in_epoch = 0
        with DeviceReads(trainer.device, [trainer.model, trainer.frontend]) as reads:
            trainer.train_epoch(0)
    assert reads.calls == ["item", "item"]


def test_stop_at_val_acc_ends_training_at_the_target_also_after_a_resume(synthetic_root, tmp_path):
    cfg = small_config(synthetic_root, tmp_path, "train.epochs=4", "train.stop_at_val_acc=0.01")
    with trainer_for(cfg) as trainer:
        info = trainer.fit()
        assert info["stopped_at_val_acc"] and trainer.progress.epoch == 1
        assert info["placement"] == "loader" and info["fit_seconds"] > 0
    with trainer_for(cfg) as resumed:
        assert resumed.progress.global_step == 6
        info = resumed.fit()
        assert resumed.progress.global_step == 6 and info["stopped_at_val_acc"]

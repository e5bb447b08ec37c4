"""GPU checks: skipped (with the reason shown by -rs) on machines without CUDA, such as CI here."""
import json
from pathlib import Path

import pytest
import torch
from support import REPO, trainer_for

from sctrain.config import load_config
from sctrain.training.distributed import resolve_precision
from sctrain.training.trainer import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]


def test_auto_precision_picks_bf16_on_a_gpu():
    assert resolve_precision("auto") == ("bf16" if torch.cuda.is_bf16_supported() else "no")


@pytest.mark.parametrize("compile_model", [False, True])
def test_bf16_training_on_the_gpu(synthetic_root, tmp_path, compile_model):
    cfg = load_config(REPO / "configs/debug.yaml", [
        f"data.root={synthetic_root}", f"output_dir={tmp_path}", "train.epochs=2", "train.batch_size=32",
        f"train.compile={str(compile_model).lower()}", "tracking.report=false"])
    results = train(cfg)
    assert results["precision"] in ("bf16", "no") and results["device"].startswith("cuda")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "cuda" in saved["latency"] and saved["latency"]["cuda"]["batch1"]["p50_ms"] > 0
    ckpt = torch.load(tmp_path / "best_sc.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])


def gpu_trainer(root: Path, out: Path, *overrides: str):
    return trainer_for(load_config(REPO / "configs/debug.yaml", [
        f"data.root={root}", f"output_dir={out}", "train.batch_size=16", "tracking.mode=disabled",
        "tracking.report=false", "latency.enabled=false", *overrides]))


def test_auto_placement_puts_the_splits_on_the_gpu(synthetic_root, tmp_path):
    with gpu_trainer(synthetic_root, tmp_path) as trainer:
        assert trainer.placement.kind == "device"
        assert trainer.placement.resident("train").audio.device.type == "cuda"
        audio, target = next(iter(trainer.batches.epoch()))
        assert audio.is_cuda and target.is_cuda and audio.dtype == torch.int16


@pytest.mark.parametrize("placement", ["device", "loader"])
def test_training_steps_never_wait_for_the_gpu(synthetic_root, tmp_path, placement):
    """CUDA's sync debug mode raises on any call that makes the host wait for the device (.item(), a
    device-to-host copy, nonzero): none may happen in the steps or the stop vote."""
    with gpu_trainer(synthetic_root, tmp_path, f"data.placement={placement}", "augment.mixup_p=0.5") as trainer:
        batches = trainer.batches.epoch()
        trainer.train_step(*next(iter(batches)))  # first-call allocations outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for audio, target in batches:
                trainer.train_step(audio, target)
                trainer.stop.should_stop(trainer.accelerator)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("mode", ["reduce-overhead"])  # max-autotune autotunes for minutes
def test_compile_modes_and_channels_last_train(synthetic_root, tmp_path, mode):
    with gpu_trainer(synthetic_root, tmp_path, "train.compile=true", f"train.compile_mode={mode}",
                     "train.channels_last=true", "data.placement=device") as trainer:
        trainer.train_epoch(0)
        trainer.progress.step_in_epoch = 0
        trainer.train_epoch(1)  # a second epoch replays the graph (CUDA graphs: the same static shapes)
        assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())

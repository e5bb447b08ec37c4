"""GPU checks: skipped (with the reason shown by -rs) on machines without CUDA, such as CI here."""
import json
from pathlib import Path

import pytest
import torch

from sctrain.config import load_config
from sctrain.training.distributed import resolve_precision
from sctrain.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
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

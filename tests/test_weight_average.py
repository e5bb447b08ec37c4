"""``train.ema_decay``: best_sc.pt holds the moving average of the weights of every optimizer step, computed here
independently from the weights each step left; the config refuses decays outside [0, 1)."""
from __future__ import annotations

import pytest
import torch
from support import REPO, trainer_for

from sctrain.artifacts.best import load_best
from sctrain.config import ConfigError, load_config
from sctrain.inference.loading import load_model

DECAY = 0.8  # short memory: 6 steps move the average well away from the first copy
TINY = ["model.kwsnet.width=8", "train.batch_size=16", "train.eval_batch_size=64", "data.num_workers=0",
        "latency.enabled=false", "tracking.report=false", "tracking.mode=disabled", "train.checkpoint_every=0",
        "train.epochs=1", f"train.ema_decay={DECAY}"]


def test_best_checkpoint_holds_the_ema_of_every_step(synthetic_root, tmp_path):
    cfg = load_config(REPO / "configs/debug.yaml", [f"data.root={synthetic_root}", f"output_dir={tmp_path}", *TINY])
    steps: list[dict] = []
    with trainer_for(cfg) as trainer:
        net = trainer.raw_model
        # The torch optimizer's own hook: the weights every optimizer step leaves (what the average must fold in).
        trainer.optimizer.optimizer.register_step_post_hook(
            lambda *_: steps.append({k: v.detach().clone() for k, v in net.named_parameters()}))
        trainer.fit()
        raw_buffers = {k: v.clone() for k, v in net.named_buffers()}
        raw_params = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert len(steps) == 6  # 96 clips / 16

    expected = dict(steps[0])
    for weights in steps[1:]:
        expected = {k: DECAY * expected[k] + (1 - DECAY) * w for k, w in weights.items()}
    best = load_best(tmp_path / "best_sc.pt")
    assert best["metrics"]["weights"] == "ema" and best["metrics"]["ema_decay"] == DECAY
    for key, tensor in expected.items():
        torch.testing.assert_close(best["model"][key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(best["model"][k], raw_params[k]) for k in raw_params)  # not the raw weights
    for key, tensor in raw_buffers.items():  # BatchNorm statistics: the trained model's, not averaged
        assert torch.equal(best["model"][key], tensor), key
    load_model(tmp_path / "best_sc.pt")  # the inference loader takes it unchanged (a plain state dict)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_ema_decay_out_of_range_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^config key 'train.ema_decay': must be in \[0, 1\)"):
        load_config(REPO / "configs/debug.yaml", [f"train.ema_decay={value}"])

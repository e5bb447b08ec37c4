"""Quantization-aware training (train.qat): fake quantization on every family, a float best_sc.pt that loads
like any other, and the int8 export of a QAT run."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from support import REPO, train_on_one_thread

from sctrain.audio.features import feature_shape
from sctrain.config import ConfigError, load_config
from sctrain.models.registry import create_model, get_family, list_models
from sctrain.training.qat import FakeQuantReLU, float_copy, prepare_qat


def tiny(name: str):
    fam = get_family(name)
    return load_config(None, [f"model.name={name}", *(f"model.{name}.{k}={v}" for k, v in fam.test_size.items()),
                              *(f"features.{k}={v}" for k, v in fam.features.items())])


@pytest.mark.parametrize("name", list_models())
def test_fake_quantization_rounds_and_the_float_copy_is_the_family_network(name):
    cfg = tiny(name)
    torch.manual_seed(0)
    net = create_model(cfg.model, cfg.features, 5).eval()
    x = torch.randn(4, 1, *feature_shape(cfg.features), generator=torch.Generator().manual_seed(1))
    reference = net(x)
    qat = prepare_qat(copy.deepcopy(net)).eval()  # eval: BatchNorm statistics stay as they are
    assert any(isinstance(m, FakeQuantReLU) for m in qat.modules()) or name == "kwt"  # kwt uses GELU
    with torch.no_grad():
        rounded = qat(x)
        reference = reference.detach()
    assert not torch.equal(rounded, reference)  # weights and activations on an 8-bit grid
    assert torch.allclose(rounded, reference, atol=0.1 * float(reference.abs().max()) + 1e-3)
    restored = float_copy(qat)
    assert set(restored.state_dict()) == set(net.state_dict())
    torch.testing.assert_close(restored(x), reference)
    qat.train()(x).sum().backward()  # gradients flow through the fake quantization (straight-through)
    assert all(p.grad is not None for p in qat.parameters() if p.requires_grad)


def test_qat_is_not_combined_with_weight_averaging_or_compile():
    for other in ("train.ema_decay=0.99", "train.compile=true"):
        with pytest.raises(ConfigError, match="train.qat"):
            load_config(None, ["train.qat=true", other])


def test_a_qat_run_writes_a_float_checkpoint_that_exports_to_int8(synthetic_root, tmp_path):
    from sctrain.inference import export
    from sctrain.inference.loading import load_model

    cfg = load_config(REPO / "configs/debug.yaml",
                      [f"data.root={synthetic_root}", f"output_dir={tmp_path / 'run'}", "train.epochs=1",
                       "train.max_steps=4", "model.kwsnet.width=8", "data.num_workers=0", "train.qat=true",
                       "latency.enabled=false", "tracking.report=false", "tracking.mode=disabled"])
    train_on_one_thread(cfg)
    model = load_model(tmp_path / "run" / "best_sc.pt")  # the family's own keys: a float checkpoint
    assert model.config.train.qat
    clips = export.clip_batch(export.find_clips([synthetic_root], 16))
    result = export.write_checked(model, tmp_path / "m.int8.onnx", "onnx", "audio", clips.astype(np.float32),
                                  export.Tolerance.int8(min_agreement=0.5, max_prob_diff=1.0), int8=True,
                                  calibration=clips)
    assert result["clips"] == 16 and (tmp_path / "m.int8.onnx").exists()

"""Fast unit tests of the CNN and the raw-audio classifier wrapper."""
from __future__ import annotations

import pytest
import torch

from sctrain.audio.constants import frames_per_clip
from sctrain.audio.features import LogMel
from sctrain.config import FeatureConfig, ModelConfig
from sctrain.models.classifier import AudioClassifier
from sctrain.models.kwsnet import KWSNet, KWSNetConfig
from sctrain.models.registry import count_parameters, create_model


@pytest.mark.parametrize("width", [8, 16, 32])
def test_output_shape(width):
    net = KWSNet(num_classes=12, width=width).eval()
    assert net(torch.randn(2, 1, 64, frames_per_clip(FeatureConfig().hop_length))).shape == (2, 12)
    # Small maps still work (pools never shrink a map below 1x1) and so do other frame counts.
    assert net(torch.randn(3, 1, 8, 9)).shape == (3, 12)


def test_parameter_count_width_32():
    # convs 9*(1*32 + 32*64 + 64*128 + 128*256) + BN 2*(32+64+128+256) + head 256*C + C
    convs_bn = 9 * (32 + 32 * 64 + 64 * 128 + 128 * 256) + 2 * (32 + 64 + 128 + 256)
    assert count_parameters(KWSNet(35, 32)) == convs_bn + 256 * 35 + 35 == 397_315
    assert count_parameters(KWSNet(12, 32)) == convs_bn + 256 * 12 + 12 == 391_404


def test_build_model_from_config():
    net = create_model(ModelConfig(kwsnet=KWSNetConfig(width=16, dropout=0.3)), FeatureConfig(), num_classes=10)
    assert isinstance(net, KWSNet)
    assert net.dropout.p == 0.3 and net.head.out_features == 10 and net.head.in_features == 128


def test_backward_runs():
    torch.manual_seed(0)
    net = KWSNet(5, width=8).train()
    x = torch.randn(4, 1, 32, 40)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # Near-uniform initial predictions: the first loss is close to log(C).
    assert abs(loss.item() - torch.log(torch.tensor(5.0)).item()) < 0.3


def test_init_deterministic_under_seed():
    torch.manual_seed(7)
    a = KWSNet(12, 8)
    torch.manual_seed(7)
    b = KWSNet(12, 8)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_audio_classifier_end_to_end():
    torch.manual_seed(0)
    features = LogMel(FeatureConfig())
    net = KWSNet(12, width=8)
    clf = AudioClassifier(features, net).eval()
    wave = torch.randn(3, 16000) * 0.1
    logits = clf(wave)
    assert logits.shape == (3, 12)
    assert torch.allclose(logits, net(features(wave)))
    assert clf(wave[0]).shape == (1, 12)


def test_audio_classifier_exports_with_dynamic_batch():
    clf = AudioClassifier(LogMel(FeatureConfig()), KWSNet(12, width=8)).eval()
    wave = torch.randn(2, 16000) * 0.1
    batch = torch.export.Dim("batch")
    program = torch.export.export(clf, (wave,), dynamic_shapes={"wave": {0: batch}})
    other = torch.randn(5, 16000) * 0.1
    assert torch.allclose(program.module()(other), clf(other), atol=1e-5)

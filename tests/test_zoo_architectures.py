"""The published keyword-spotting architectures in sctrain.models: shapes, parameter counts against the papers,
gradients, determinism, and that each one survives tracing, torch.export, ONNX Runtime, bf16 autocast and
Conv->BN folding. Small sizes and few frames keep the whole file fast on one CPU core."""
from __future__ import annotations

import copy
import dataclasses
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sctrain.audio.features import feature_shape
from sctrain.config import FeatureConfig
from sctrain.models import bcresnet, kwt
from sctrain.models.bcresnet import SubSpectralNorm
from sctrain.models.registry import get_family, list_models

NUM_CLASSES = 7  # not 12, so a head size hard-coded to the paper's label count would show
FRAMES = 32  # fewer than a clip's 101: every family at its registered tiny size (test_size) stays fast
FAMILIES = list_models()


def _paper(family: str) -> dict:
    """The family module's PAPER table (variant -> the paper's figures), where it has one."""
    return getattr(sys.modules[get_family(family).build.__module__], "PAPER", {})


def _n_features(family: str) -> int:
    return feature_shape(FeatureConfig(**get_family(family).features))[0]


PAPER_VARIANTS = [(name, v) for name in FAMILIES for v in _paper(name)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(family: str, seed: int = 0, frames: int = FRAMES) -> tuple[nn.Module, torch.Tensor]:
    """The family's tiny model at its paper's feature size (with non-trivial BN statistics, so folding/eval
    paths are really tested) and a batch of 3 inputs."""
    registered, n_features = get_family(family), _n_features(family)
    torch.manual_seed(seed)
    model = registered.build(registered.config(**registered.test_size), NUM_CLASSES, n_features, frames)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, torch.randn(3, 1, n_features, frames)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
def test_variants_paper_and_features_tables(family):
    registered = get_family(family)
    assert set(_paper(family)) <= set(registered.variants)  # every figure from a paper names a variant
    assert all(entry["params"] > 0 for entry in _paper(family).values())
    assert set(registered.features) <= {f.name for f in dataclasses.fields(FeatureConfig)}
    for values in registered.variants.values():  # a variant is a valid setting of the family's section
        registered.config(**values)


@pytest.mark.parametrize(("family", "variant"), PAPER_VARIANTS)
def test_paper_parameter_counts_within_5_percent(family, variant):
    """Constructed only: 12 labels and the paper's feature size, trainable parameters (BN buffers excluded)."""
    registered, paper = get_family(family), _paper(family)[variant]
    model = registered.build(registered.config(**registered.variants[variant]), 12, _n_features(family),
                             paper.get("frames", 101))
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(count / paper["params"] - 1) < 0.05, f"{family}-{variant}: {count} vs paper {paper['params']}"


@pytest.mark.parametrize("family", FAMILIES)
def test_input_kind(family):
    """'image' families start with a 2-D conv, 'channels' ones with a 1-D conv over the features as channels;
    those two pool globally and take any number of frames, a 'tokens' family only the frames it was built for."""
    model, x = _build(family)
    model.eval()
    kind, convs = get_family(family).input, [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    if kind == "image":
        assert isinstance(convs[0], nn.Conv2d)
    elif kind == "channels":
        assert isinstance(convs[0], nn.Conv1d) and convs[0].in_channels == x.shape[2]
    longer = torch.randn(2, 1, x.shape[2], FRAMES + 8)
    with torch.no_grad():
        if kind == "tokens":
            with pytest.raises(RuntimeError):
                model(longer)
        else:
            assert model(longer).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("family", FAMILIES)
def test_batchnorm_trait(family):
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in _build(family)[0].modules())
    assert has_bn == get_family(family).batchnorm


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_in_training_and_eval(family):
    model, x = _build(family)
    model.train()
    assert model(x[:2]).shape == (2, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_reaches_every_parameter_with_finite_grads(family):
    model, x = _build(family)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("family", FAMILIES)
def test_init_is_deterministic_under_manual_seed(family):
    a, _ = _build(family, seed=3)
    b, _ = _build(family, seed=3)
    c, _ = _build(family, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_batch_of_one_equals_its_row_of_a_batch(family):
    model, x = _build(family)
    model.eval()
    with torch.no_grad():
        full = model(x)
        for i in range(x.shape[0]):
            _close(model(x[i:i + 1]), full[i:i + 1], tol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # deprecated in torch 2.x, still what sctrain.export uses
@pytest.mark.parametrize("family", FAMILIES)
def test_jit_trace_matches_eager_on_another_batch_size(family):
    model, x = _build(family)
    model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, x[:2], check_trace=False)
        _close(traced(x), model(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_export_with_dynamic_batch(family):
    model, x = _build(family)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: batch}})
        exported = program.module()
        for b in (1, 3):
            _close(exported(x[:b]), model(x[:b]))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_forward_and_backward_are_finite(family):
    model, x = _build(family)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2]))
    assert torch.isfinite(logits.float()).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _fold_adjacent_conv_bn(model: nn.Module) -> int:
    """A generic folding pass: fuse every Conv directly followed by a BatchNorm inside a Sequential."""
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names[:-1], names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
                folded += 1
    return folded


@pytest.mark.parametrize("family", [f for f in FAMILIES if get_family(f).batchnorm])
def test_every_batchnorm_follows_its_conv_in_a_sequential_and_folds(family):
    model, x = _build(family)
    model.eval()
    ssn = {id(m.bn) for m in model.modules() if isinstance(m, SubSpectralNorm)}
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and id(m) not in ssn]
    folded_model = copy.deepcopy(model)
    assert _fold_adjacent_conv_bn(folded_model) == len(bns) > 0
    with torch.no_grad():
        _close(folded_model(x), model(x))


def test_subspectralnorm_normalises_each_band_of_each_channel_with_one_batchnorm2d():
    torch.manual_seed(0)
    ssn = SubSpectralNorm(channels=3, sub_bands=5)
    assert [type(m) for m in ssn.children()] == [nn.BatchNorm2d] and ssn.bn.num_features == 15
    # Bands with very different offsets: after SSN every (channel, band) slice has zero mean and unit variance.
    x = torch.randn(4, 3, 20, 7) * 3 + torch.arange(20.0).view(1, 1, 20, 1)
    y = ssn.train()(x).reshape(4, 3, 5, 4, 7)
    assert y.mean(dim=(0, 3, 4)).abs().max() < 1e-4
    assert (y.var(dim=(0, 3, 4), unbiased=False) - 1).abs().max() < 1e-2
    # A generic BatchNorm -> SyncBatchNorm conversion reaches the band statistics.
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(SubSpectralNorm(3, 5)))
    assert isinstance(converted[0].bn, nn.SyncBatchNorm)


def test_bcresnet_rejects_feature_sizes_its_subspectral_norm_cannot_split():
    with pytest.raises(ValueError, match="sub_bands"):
        bcresnet.BCResNet(12, 64, 101)
    assert bcresnet.BCResNet(12, 64, 101, sub_bands=4)(torch.randn(2, 1, 64, 16)).shape == (2, 12)


def test_kwt_has_one_positional_embedding_row_per_frame_plus_the_class_token():
    model = kwt.KWT(12, 40, 98, dim=16, depth=1, heads=1, mlp_dim=32)
    assert model.pos_embed.shape == (1, 99, 16)

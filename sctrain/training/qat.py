"""Quantization-aware training (``train.qat``): PyTorch's own fake-quantize modules on what the int8 exports
quantize, so that the network learns weights that survive 8-bit rounding.

- Weights of every convolution and linear layer: ``torch.ao.quantization.default_per_channel_weight_fake_quant``
  (int8, symmetric, one scale per output channel: what ONNX Runtime's static quantization and the PT2E flow
  use), as a parametrization of ``weight``. Per output channel, so it rounds the trained weights exactly as it
  rounds the BatchNorm-folded ones the exporters quantize (folding scales each output channel).
- Activations: ``default_fake_quant`` (uint8, per tensor, moving-average range) on the network's input and on
  every ``nn.ReLU``'s output, the tensors between layers that the exporters quantize. Observers follow the
  module's mode: they update in training and hold in evaluation.

The network keeps its modules and its float weights, so ``best_sc.pt`` holds the float layout
(:func:`float_copy`), loads like any checkpoint, and ``python -m sctrain.export --int8`` quantizes it with its own
calibration as it does any checkpoint. Without FX graph rewriting (``prepare_qat_fx``), which would rename the
state dict's keys and fuse BatchNorm into the convolutions the families declare.
"""
from __future__ import annotations

import copy
import warnings

from torch import Tensor, nn
from torch.ao.quantization import default_fake_quant, default_per_channel_weight_fake_quant
from torch.nn.utils import parametrize

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


class _FakeQuant(nn.Module):
    """A fake-quantize module whose observer updates only in training mode, and on its first tensor whatever the
    mode (before it, a per-channel observer has no channels and a range observer no range)."""

    def __init__(self, factory) -> None:
        super().__init__()
        with warnings.catch_warnings():  # torch's own defaults pass reduce_range, which it warns about
            warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
            self.fake_quant = factory()
        self.seen = False  # a Python flag, not a tensor: no host-device sync per call

    def forward(self, x: Tensor) -> Tensor:
        self.fake_quant.enable_observer(self.training or not self.seen)
        self.seen = True
        return self.fake_quant(x)


class FakeQuantReLU(nn.Module):
    """``relu`` then the activations' fake quantization."""

    def __init__(self, relu: nn.Module) -> None:
        super().__init__()
        self.relu = relu
        self.fake_quant = _FakeQuant(default_fake_quant)

    def forward(self, x: Tensor) -> Tensor:
        return self.fake_quant(self.relu(x))


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_fake_quant(args[0]), *args[1:])


def prepare_qat(net: nn.Module) -> nn.Module:
    """Fake quantization on ``net``'s weights, input and ReLU outputs, in place; returns ``net``."""
    for module in list(net.modules()):
        if isinstance(module, _WEIGHTED):
            parametrize.register_parametrization(module, "weight", _FakeQuant(default_per_channel_weight_fake_quant))
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, FakeQuantReLU(child))
    net.input_fake_quant = _FakeQuant(default_fake_quant)
    net.register_forward_pre_hook(_quantize_input)
    return net


def float_copy(net: nn.Module) -> nn.Module:
    """A copy of a :func:`prepare_qat` network without its fake quantization: the float network, with the
    state dict keys of the family's own module (what ``best_sc.pt`` holds)."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        if parametrize.is_parametrized(module, "weight"):
            # Not parametrize.remove_parametrizations: it deletes the property from the parametrized class, which
            # the copy shares with the network still training. Back to the plain class, the float weight as it is.
            original = module.parametrizations.weight.original
            module.__class__ = module.__class__.__bases__[0]
            del module._modules["parametrizations"]
            module.register_parameter("weight", original)
        for name, child in list(module.named_children()):
            if isinstance(child, FakeQuantReLU):
                setattr(module, name, child.relu)
    del net.input_fake_quant
    net._forward_pre_hooks.clear()
    return net


def is_prepared(net: nn.Module) -> bool:
    return hasattr(net, "input_fake_quant")

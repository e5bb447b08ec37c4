"""CPU inference copies of a trained network: the same logits up to float rounding, fewer passes (eval only).

A family names its copy when it registers (:func:`sctrain.models.registry.register_model`):
:func:`fold_batchnorm` suits any network whose convolutions sit right before their BatchNorm in an
``nn.Sequential``; :class:`FoldedChannelsLastNet` adds the channels-last layout that 2-D CNNs gain from.
``python -m sctrain.bench latency`` measures the copy against the as-trained module ("eager-fast" vs "eager").
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d))


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with every BatchNorm that directly follows a convolution inside an
    ``nn.Sequential`` folded into it: one pass over each of those activation maps fewer."""
    net = copy.deepcopy(net).eval()
    for block in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        layers = list(block)
        for i in range(len(layers) - 1):
            if any(type(layers[i]) is conv and type(layers[i + 1]) is bn for conv, bn in _PAIRS):
                block[i] = fuse_conv_bn_eval(layers[i], layers[i + 1])
                block[i + 1] = nn.Identity()
    return net


class FoldedChannelsLastNet(nn.Module):
    """BatchNorm folded (:func:`fold_batchnorm`) and channels-last activations, for 2-D CNNs on the CPU:

    - PyTorch's oneDNN convolutions and, above all, its max-pooling run several times faster in the
      channels-last layout than in NCHW at batch 1;
    - except a first convolution with one input channel, which is faster in NCHW: its output is converted
      once, before pooling.
    """

    description = "BatchNorm folded, channels-last"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net = fold_batchnorm(net).to(memory_format=torch.channels_last)
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        self.first_nchw = first.in_channels == 1
        if self.first_nchw:
            first.weight.data = first.weight.data.contiguous()
            block = next(b for b in net.modules() if isinstance(b, nn.Sequential) and any(m is first for m in b))
            block.insert([i for i, m in enumerate(block) if m is first][0] + 1, _ChannelsLast())
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        layout = torch.contiguous_format if self.first_nchw else torch.channels_last
        return self.net(x.contiguous(memory_format=layout))


class _ChannelsLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class FoldedNet(nn.Module):
    """:func:`fold_batchnorm`'s copy behind a module whose name says what it is (for the latency table)."""

    description = "BatchNorm folded"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = fold_batchnorm(net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PlainNet(nn.Module):
    """The trained network as it is (eval mode), for families whose layers leave nothing to fold."""

    description = "as trained (nothing to fold)"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

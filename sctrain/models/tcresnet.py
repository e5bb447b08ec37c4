"""TC-ResNet: Choi, Seo, Shin, Byun, Kersner, Kim, Kim & Ha, "Temporal Convolution for Real-time Keyword
Spotting on Mobile Devices", Interspeech 2019 (arXiv 1904.03814); reference code github.com/hyperconnect/TC-ResNet
(``audio_nets/tc_resnet.py``).

Temporal convolution: the MFCC coefficients are the channels of a 1D conv over time, so even the first layer
sees the whole spectrum and a shallow ResNet reaches a large receptive field with few multiplies.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import FoldedNet
from sctrain.models.init import xavier_uniform
from sctrain.models.registry import register_model

VARIANTS: dict[str, dict] = {
    "8": {"depth": 8, "width_multiplier": 1.0},
    "8-1.5": {"depth": 8, "width_multiplier": 1.5},
    "14": {"depth": 14, "width_multiplier": 1.0},
    "14-1.5": {"depth": 14, "width_multiplier": 1.5},
}

# Table 1 of the paper (Speech Commands v1, 12 labels): parameters, FLOPs, test accuracy %.
PAPER: dict[str, dict] = {
    "8": {"params": 66_000, "flops": 3.0e6, "acc_v1": 96.1},
    "8-1.5": {"params": 145_000, "flops": 6.6e6, "acc_v1": 96.2},
    "14": {"params": 137_000, "flops": 6.1e6, "acc_v1": 96.2},
    "14-1.5": {"params": 305_000, "flops": 13.4e6, "acc_v1": 96.6},
}

# The reference scripts (*_mfcc_40_3010_*): 40 MFCC from 64 mel bands over 80-7600 Hz, 30 ms window, 10 ms hop
# (TF's audio_spectrogram pads the 480-sample window to a 512-point FFT).
FEATURES: dict = {"n_mfcc": 40, "n_mels": 64, "n_fft": 512, "win_length": 480, "hop_length": 160,
                  "f_min": 80.0, "f_max": 7600.0}

# Channels of the first conv then of each residual block.
_CHANNELS = {8: (16, 24, 32, 48), 14: (16, 24, 24, 32, 32, 48, 48)}


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Bias-free conv + BN (+ ReLU), 'same' padding: the reference's slim.conv2d with batch_norm normalizer."""
    layers = [nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm1d(out_ch)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class TCResBlock(nn.Module):
    """conv9-BN-ReLU, conv9-BN, + shortcut, ReLU. When the width changes the first conv has stride 2 and the
    shortcut is a stride-2 1x1 conv-BN-ReLU (the reference's ``down`` layer keeps slim's default ReLU)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        stride = 1 if in_ch == out_ch else 2
        self.body = nn.Sequential(_conv_bn(in_ch, out_ch, 9, stride), _conv_bn(out_ch, out_ch, 9, relu=False))
        self.shortcut = nn.Identity() if stride == 1 else _conv_bn(in_ch, out_ch, 1, stride)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class TCResNet(nn.Module):
    """TC-ResNet``depth`` (8 or 14) with every width scaled by ``width_multiplier``: conv3 (+BN, ReLU), 3 or 6
    residual blocks, global average pool, dropout (keep 0.5 in the reference), linear classifier.

    Input ``[B, 1, n_features, T]`` MFCCs, output ``[B, num_classes]``; any ``T`` works (global pool), so
    ``frames`` is accepted and ignored.
    """

    def __init__(self, num_classes: int, n_features: int = 40, frames: int | None = None, depth: int = 8,
                 width_multiplier: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        del frames  # global pooling: any number of frames
        if depth not in _CHANNELS:
            raise ValueError(f"TCResNet: depth must be one of {sorted(_CHANNELS)}, got {depth}")
        channels = [int(c * width_multiplier) for c in _CHANNELS[depth]]
        self.stem = _conv_bn(n_features, channels[0], 3)
        self.blocks = nn.Sequential(*(TCResBlock(a, b) for a, b in zip(channels[:-1], channels[1:])))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head_dropout = nn.Dropout(dropout)
        # The reference's 1x1 'fc' conv has no bias (biases_initializer=None); a bias costs 12 parameters and
        # keeps the head an ordinary Linear for generic code.
        self.head = nn.Linear(channels[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialises every conv with Xavier (Glorot uniform).
        xavier_uniform(self, (nn.Conv1d, nn.Linear))

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x.flatten(1, 2)))  # [B, 1, F, T] -> [B, F, T]: coefficients as channels
        return self.head(self.head_dropout(self.pool(x).flatten(1)))


@dataclass
class TCResNetConfig:
    depth: int = doc(8, "TC-ResNet8 or TC-ResNet14")
    width_multiplier: float = doc(1.0, "channel multiplier k of TC-ResNet-k (1 or 1.5 in the paper)")
    dropout: float = doc(0.5, "dropout before the linear head (the reference's 0.5)")

    def __post_init__(self) -> None:
        _require(self.depth in (8, 14), "model.tcresnet.depth", f"must be 8 or 14, got {self.depth}")
        _require(self.width_multiplier > 0, "model.tcresnet.width_multiplier", "must be > 0")
        _require_fraction(self.dropout, "model.tcresnet.dropout")


@register_model("tcresnet", config=TCResNetConfig, cpu_copy=FoldedNet, variants=VARIANTS, input="channels",
                test_size={"depth": 14, "width_multiplier": 0.25}, features=FEATURES)
def build_tcresnet(cfg, num_classes: int, n_features: int, frames: int) -> TCResNet:
    """TC-ResNet8/14 (Choi et al. 2019): temporal convolutions over the features as channels."""
    return TCResNet(num_classes, n_features, frames, depth=cfg.depth, width_multiplier=cfg.width_multiplier,
                    dropout=cfg.dropout)

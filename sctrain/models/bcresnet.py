"""BC-ResNet: Kim, Chang, Lee & Sung, "Broadcasted Residual Learning for Efficient Keyword Spotting",
Interspeech 2021 (arXiv 2106.04140); reference code github.com/Qualcomm-AI-research/bcresnet.

Most of the work happens on 1D temporal features: each block does one cheap frequency-depthwise 2D conv,
averages frequency away, runs a temporal depthwise-separable conv on the ``[C, 1, T]`` result, and
*broadcasts* it back over frequency when adding the residuals. BC-ResNet-tau is BC-ResNet-1 with every
channel count multiplied by tau.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import FoldedNet
from sctrain.models.registry import register_model

VARIANTS: dict[str, dict] = {name: {"width": float(name)} for name in ("1", "1.5", "2", "3", "6", "8")}

# Table 3 of the paper: trainable parameters, multiplies, top-1 test accuracy (%) on Speech Commands v1/v2-12.
PAPER: dict[str, dict] = {
    "1": {"params": 9_200, "mults": 3.1e6, "acc_v1": 96.6, "acc_v2": 96.9},
    "1.5": {"params": 17_200, "mults": 5.5e6, "acc_v1": 97.2, "acc_v2": 97.6},
    "2": {"params": 27_300, "mults": 8.5e6, "acc_v1": 97.3, "acc_v2": 97.8},
    "3": {"params": 54_200, "mults": 16.2e6, "acc_v1": 97.6, "acc_v2": 98.2},
    "6": {"params": 188_000, "mults": 53.1e6, "acc_v1": 97.9, "acc_v2": 98.6},
    "8": {"params": 321_000, "mults": 89.1e6, "acc_v1": 98.0, "acc_v2": 98.7},
}

# 40 log-mels, 30 ms window, 10 ms hop, centred STFT (torchaudio MelSpectrogram defaults otherwise): 101 frames.
FEATURES: dict = {"n_mels": 40, "n_fft": 512, "win_length": 480, "hop_length": 160}

# Stage layout (Table 1): blocks per stage, output channels as a multiple of the base width, frequency stride
# of the stage's first block, temporal dilation. The base width is int(8 * tau), so BC-ResNet-1 has
# 16 (stem), 8, 12, 16, 20, 32 (head) channels.
_STAGES = ((2, 1.0, 1, 1), (2, 1.5, 2, 2), (4, 2.0, 2, 4), (4, 2.5, 1, 8))
_STEM, _HEAD = 2, 4


class SubSpectralNorm(nn.Module):
    """SubSpectral Normalisation (Chang et al., ICASSP 2021): batch norm with separate statistics and affine
    parameters for each of ``sub_bands`` equal frequency bands of every channel.

    Folding the bands into the channel axis lets one plain ``nn.BatchNorm2d(channels * sub_bands)`` do it,
    so generic BatchNorm -> SyncBatchNorm conversion and BN-aware tooling handle this module unchanged.
    """

    def __init__(self, channels: int, sub_bands: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.sub_bands = sub_bands
        self.bn = nn.BatchNorm2d(channels * sub_bands, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, t = x.shape
        x = self.bn(x.reshape(b, c * self.sub_bands, f // self.sub_bands, t))
        return x.reshape(b, c, f, t)


class BCResBlock(nn.Module):
    """y = ReLU(shortcut + f2(x) + broadcast(f1(avgpool_freq(f2(x))))), Fig. 2 right of the paper.

    f2: (1x1 conv-BN-ReLU when channels change), 3x1 frequency-depthwise conv, SubSpectralNorm.
    f1: 1x3 dilated temporal-depthwise conv, BN, SiLU, 1x1 conv, channel dropout.
    A transition block (channels or frequency size change) has no identity shortcut.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, sub_bands: int, dropout: float) -> None:
        super().__init__()
        self.transition = in_ch != out_ch or stride != 1
        f2 = []
        if in_ch != out_ch:
            f2 += [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
        f2 += [
            nn.Conv2d(out_ch, out_ch, (3, 1), stride=(stride, 1), padding=(1, 0), groups=out_ch, bias=False),
            SubSpectralNorm(out_ch, sub_bands),
        ]
        self.f2 = nn.Sequential(*f2)
        self.f1 = nn.Sequential(
            # Dilation grows per stage (1, 2, 4, 8) so the receptive field covers the 1 s clip while the
            # time axis keeps full resolution (the paper strides only in frequency).
            nn.Conv2d(out_ch, out_ch, (1, 3), padding=(0, dilation), dilation=(1, dilation), groups=out_ch,
                      bias=False),
            nn.BatchNorm2d(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 1, bias=False),
            nn.Dropout2d(dropout),
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        aux = self.f2(x)  # [B, C, F, T]: the auxiliary 2D residual keeps frequency awareness
        y = self.f1(aux.mean(dim=2, keepdim=True)) + aux  # [B, C, 1, T] broadcast over frequency
        if not self.transition:  # structural (fixed at construction), not data-dependent
            y = y + x
        return self.act(y)


class BCResNet(nn.Module):
    """BC-ResNet-``width``: 5x5 stem (frequency stride 2), 12 BC-ResBlocks in four stages, 5x5 depthwise conv
    over the remaining frequency bands, 1x1 conv-BN-ReLU, global average pool, 1x1 classifier.

    Input ``[B, 1, n_features, T]`` log-mels, output ``[B, num_classes]`` logits; any ``T`` works (the pool is
    global), so ``frames`` is accepted for the common interface and ignored. SubSpectralNorm needs the
    frequency size of every stage (``ceil(F/2)``, ``ceil(F/4)``, ``ceil(F/8)``) to divide into ``sub_bands``
    (5 in the paper, which suits 40 mels: 20, 10, 5).
    """

    def __init__(self, num_classes: int, n_features: int = 40, frames: int | None = None, width: float = 1.0,
                 dropout: float = 0.1, sub_bands: int = 5, head_dropout: float = 0.0) -> None:
        super().__init__()
        del frames  # global pooling: the network works at any number of frames
        base = int(8 * width)
        freq = (n_features + 1) // 2  # after the stem's stride-2, 5x5, padding-2 conv
        in_ch = base * _STEM
        self.stem = nn.Sequential(
            nn.Conv2d(1, in_ch, 5, stride=(2, 1), padding=2, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
        )
        blocks = []
        for n, multiple, stride, dilation in _STAGES:
            freq = (freq + stride - 1) // stride
            if freq % sub_bands:
                raise ValueError(f"BCResNet: {n_features} feature bands give a stage with {freq} frequency bins, "
                                 f"not divisible by sub_bands={sub_bands}; use 40 mels (as the paper) or set "
                                 "sub_bands to a divisor of every stage's size")
            for i in range(n):
                out_ch = int(base * multiple)
                blocks.append(BCResBlock(in_ch, out_ch, stride if i == 0 else 1, dilation, sub_bands, dropout))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        if freq < 5:
            raise ValueError(f"BCResNet: {n_features} feature bands leave {freq} < 5 bins for the 5x5 head conv")
        out_ch = base * _HEAD
        self.classifier = nn.Sequential(
            # 5x5 depthwise with no frequency padding shrinks frequency (5 -> 1 for 40 mels) before the costly
            # pointwise conv, as in the paper.
            nn.Conv2d(in_ch, in_ch, 5, padding=(0, 2), groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(out_ch, num_classes)  # the paper's final 1x1 conv on a 1x1 map, with bias

    def forward(self, x: Tensor) -> Tensor:
        x = self.classifier(self.blocks(self.stem(x)))
        return self.head(self.head_dropout(x))


@dataclass
class BCResNetConfig:
    width: float = doc(1.0, "width multiplier tau of BC-ResNet-tau: 1, 1.5, 2, 3, 6 or 8 in the paper "
                            "(9.2k-321k params)")
    sub_bands: int = doc(5, "SubSpectral Normalisation bands; features.n_mels must be divisible by it, and by it x 4")
    dropout: float = doc(0.1, "channel dropout inside each block (the paper's 0.1)")

    def __post_init__(self) -> None:
        _require(self.width > 0, "model.bcresnet.width", f"must be > 0, got {self.width}")
        _require(self.sub_bands >= 1, "model.bcresnet.sub_bands", "must be >= 1")
        _require_fraction(self.dropout, "model.bcresnet.dropout")


@register_model("bcresnet", config=BCResNetConfig, cpu_copy=FoldedNet, variants=VARIANTS, test_size={"width": 1.0},
                features=FEATURES)
def build_bcresnet(cfg, num_classes: int, n_features: int, frames: int) -> BCResNet:
    """BC-ResNet (Kim et al. 2021): broadcasted residual blocks with SubSpectral Normalisation."""
    return BCResNet(num_classes, n_features, frames, width=cfg.width, dropout=cfg.dropout, sub_bands=cfg.sub_bands)

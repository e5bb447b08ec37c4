"""MatchboxNet: Majumdar & Ginsburg, "MatchboxNet: 1D Time-Channel Separable Convolutional Neural Network
Architecture for Speech Commands Recognition", Interspeech 2020 (arXiv 2004.08531); reference: NVIDIA NeMo's
``examples/asr/conf/matchboxnet/matchboxnet_3x1x64_v*.yaml`` built by ``ConvASREncoder`` / ``JasperBlock`` and
``ConvASRDecoderClassification``.

MatchboxNet-BxRxC is a QuartzNet-style stack of 1D time-channel separable convolutions over the MFCC frames
(coefficients are the input channels): a prologue, B residual blocks of R separable sub-blocks with C channels,
two epilogue convs, and a global average pool before the linear classifier.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import FoldedNet
from sctrain.models.init import xavier_uniform
from sctrain.models.registry import register_model

VARIANTS: dict[str, dict] = {
    "3x1x64": {"blocks": 3, "repeats": 1, "channels": 64},
    "3x2x64": {"blocks": 3, "repeats": 2, "channels": 64},
    "6x2x64": {"blocks": 6, "repeats": 2, "channels": 64},
}

# Tables 2-3 of the paper (parameters as printed, test accuracy % on Speech Commands v1-12 / v2-12).
PAPER: dict[str, dict] = {
    "3x1x64": {"params": 77_000, "acc_v1": 97.21, "acc_v2": 96.91},
    "3x2x64": {"params": 93_000, "acc_v1": 97.48, "acc_v2": 97.21},
    "6x2x64": {"params": 140_000, "acc_v2": 97.4},
}

# NeMo AudioToMFCCPreprocessor in the configs: 64 MFCC from 64 mels, 25 ms Hann window, 10 ms hop, 512-point FFT.
FEATURES: dict = {"n_mfcc": 64, "n_mels": 64, "n_fft": 512, "win_length": 400, "hop_length": 160}

# NeMo's JasperBlock batch norm: eps 1e-3 (not PyTorch's 1e-5), momentum 0.1.
_BN_EPS = 1e-3


def _separable(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    """Time-depthwise conv then pointwise conv then BN: the pointwise conv and its BN stay adjacent (foldable).
    Neither conv has a bias, as in NeMo: the BN's shift supplies it."""
    return [
        nn.Conv1d(in_ch, in_ch, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=in_ch,
                  bias=False),
        nn.Conv1d(in_ch, out_ch, 1, bias=False),
        nn.BatchNorm1d(out_ch, eps=_BN_EPS),
    ]


def _sub_block(in_ch: int, out_ch: int, kernel: int, dropout: float, dilation: int = 1,
               separable: bool = True) -> nn.Sequential:
    """One conv-BN-ReLU-dropout unit (a whole non-residual NeMo block with repeat 1)."""
    conv = _separable(in_ch, out_ch, kernel, dilation) if separable else [
        nn.Conv1d(in_ch, out_ch, kernel, padding=(kernel - 1) // 2, bias=False),
        nn.BatchNorm1d(out_ch, eps=_BN_EPS),
    ]
    return nn.Sequential(*conv, nn.ReLU(), nn.Dropout(dropout))


class MatchboxBlock(nn.Module):
    """R separable sub-blocks; ReLU + dropout follow every sub-block except the last, whose BN output is added
    to a 1x1 conv-BN projection of the block input before the final ReLU + dropout (NeMo ``residual: true``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, repeats: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(repeats):
            layers += _separable(in_ch if i == 0 else out_ch, out_ch, kernel)
            if i < repeats - 1:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.residual = nn.Sequential(nn.Conv1d(in_ch, out_ch, 1, bias=False), nn.BatchNorm1d(out_ch, eps=_BN_EPS))
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.residual(x))


class MatchboxNet(nn.Module):
    """MatchboxNet-``blocks`` x ``repeats`` x ``channels``.

    Prologue: separable conv k=11, 128 channels. Blocks: kernels 13, 15, 17, ... (+2 per block). Epilogue:
    separable conv k=29 with dilation 2, 128 channels, then a 1x1 conv, 128 channels. Then global average pool
    over time and a linear classifier (NeMo's classification decoder).

    Input ``[B, 1, n_features, T]`` (MFCC coefficients become the conv channels), output ``[B, num_classes]``;
    any ``T`` works, so ``frames`` is accepted and ignored.
    """

    def __init__(self, num_classes: int, n_features: int = 64, frames: int | None = None, blocks: int = 3,
                 repeats: int = 1, channels: int = 64, kernels: Sequence[int] | None = None, dropout: float = 0.0,
                 outer_channels: int = 128, head_dropout: float = 0.0) -> None:
        super().__init__()
        del frames  # global pooling: any number of frames
        if kernels is None:
            kernels = [13 + 2 * i for i in range(blocks)]
        if len(kernels) != blocks:
            raise ValueError(f"MatchboxNet: {len(kernels)} kernel sizes given for {blocks} blocks")
        self.prologue = _sub_block(n_features, outer_channels, 11, dropout)
        body, in_ch = [], outer_channels
        for kernel in kernels:
            body.append(MatchboxBlock(in_ch, channels, kernel, repeats, dropout))
            in_ch = channels
        self.blocks = nn.Sequential(*body)
        self.epilogue = nn.Sequential(
            _sub_block(channels, outer_channels, 29, dropout, dilation=2),  # wide receptive field, few weights
            _sub_block(outer_channels, outer_channels, 1, dropout, separable=False),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(outer_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # NeMo's default init_mode for ConvASREncoder and the classification decoder: Xavier-uniform weights.
        xavier_uniform(self, (nn.Conv1d, nn.Linear))

    def forward(self, x: Tensor) -> Tensor:
        x = self.epilogue(self.blocks(self.prologue(x.flatten(1, 2))))  # [B, 1, F, T] -> [B, F, T]
        return self.head(self.head_dropout(self.pool(x).flatten(1)))


@dataclass
class MatchboxNetConfig:
    blocks: int = doc(3, "B of MatchboxNet BxRxC: residual blocks (3 or 6 in the paper)")
    repeats: int = doc(2, "R: time-channel separable sub-blocks per block (1 or 2)")
    channels: int = doc(64, "C: channels of the blocks (64)")
    dropout: float = doc(0.0, "dropout after each sub-block")

    def __post_init__(self) -> None:
        for name in ("blocks", "repeats", "channels"):
            _require(getattr(self, name) >= 1, f"model.matchboxnet.{name}", "must be >= 1")
        _require_fraction(self.dropout, "model.matchboxnet.dropout")


@register_model("matchboxnet", config=MatchboxNetConfig, cpu_copy=FoldedNet, variants=VARIANTS, input="channels",
                test_size={"blocks": 1, "repeats": 2, "channels": 8}, features=FEATURES)
def build_matchboxnet(cfg, num_classes: int, n_features: int, frames: int) -> MatchboxNet:
    """MatchboxNet BxRxC (Majumdar & Ginsburg 2020): 1-D time-channel separable convolutions."""
    return MatchboxNet(num_classes, n_features, frames, blocks=cfg.blocks, repeats=cfg.repeats, channels=cfg.channels,
                       dropout=cfg.dropout)

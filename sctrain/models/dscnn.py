"""DS-CNN: Zhang, Suda, Lai & Chandra, "Hello Edge: Keyword Spotting on Microcontrollers", arXiv 1711.07128
(2017); reference code github.com/ARM-software/ML-KWS-for-MCU (``models.py: create_ds_cnn_model`` and the
``--model_size_info`` of the three DS-CNN runs in ``train_commands.txt``).

A MobileNet-style stack: one ordinary conv over the MFCC image, then depthwise-separable convs (3x3 depthwise,
BN, ReLU, 1x1 pointwise, BN, ReLU), a global average pool and a linear classifier. S/M/L were sized to fit
microcontrollers with ~80 KB / 200 KB / 500 KB of memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import FoldedChannelsLastNet
from sctrain.models.init import xavier_uniform
from sctrain.models.registry import TIME_PADDING_DOC, TIME_PADDINGS, register_model

# Per size: channels of every layer, number of depthwise-separable layers, (freq, time) stride of the first
# conv, (freq, time) stride of the first depthwise-separable layer (later ones have stride 1).
_SIZES = {
    "S": {"channels": 64, "blocks": 4, "stride": (2, 2), "ds_stride": (1, 1)},
    "M": {"channels": 172, "blocks": 4, "stride": (1, 2), "ds_stride": (2, 2)},
    "L": {"channels": 276, "blocks": 5, "stride": (1, 2), "ds_stride": (2, 2)},
}
VARIANTS: dict[str, dict] = {size: {"size": size} for size in _SIZES}

# The paper gives memory (8-bit weights + activations) and operations, not parameter counts: "params" here is
# what the reference model_size_info builds with 12 labels and 10 MFCC (TF trainable variables: conv kernels
# and biases, BN betas). Accuracy: the paper's summary table (Speech Commands v1, 12 labels).
PAPER: dict[str, dict] = {
    "S": {"params": 23_180, "memory_kb": 38.6, "ops": 5.4e6, "acc_v1": 94.4},
    "M": {"params": 136_580, "memory_kb": 189.2, "ops": 19.8e6, "acc_v1": 94.9},
    "L": {"params": 413_736, "memory_kb": 497.6, "ops": 56.9e6, "acc_v1": 95.4},
}

# ML-KWS-for-MCU's DS-CNN runs: 10 MFCC (TF contrib mfcc defaults: 40 mel bands over 20-4000 Hz), 40 ms window,
# 20 ms hop, so 49 frames per second (the 640-sample window uses a 1024-point FFT).
FEATURES: dict = {"n_mfcc": 10, "n_mels": 40, "n_fft": 1024, "win_length": 640, "hop_length": 320,
                  "f_min": 20.0, "f_max": 4000.0}


def _same_pad(kernel: tuple[int, int], time: bool = True) -> nn.ZeroPad2d:
    """Pads kernel-1 per axis, the odd zero after (an even kernel such as 4x10 cannot be padded symmetrically):
    the output is ceil(size / stride), as TF's 'SAME' gives, and the values are TF's for stride 1 or an odd
    input size (TF pads less in front only for an even size, a stride of 2 and an odd kernel). ``time=False``:
    the frequency axis only (``time_padding: valid``)."""
    kf, kt = kernel
    return nn.ZeroPad2d(((kt - 1) // 2 * time, kt // 2 * time, (kf - 1) // 2, kf // 2))


class DSCNN(nn.Module):
    """DS-CNN-``size`` (S, M, L), or explicit ``channels`` / ``blocks`` overriding that size's values.

    First conv: 4 (frequency) x 10 (time) kernel, BN, ReLU. Then ``blocks`` depthwise-separable layers.
    Input ``[B, 1, n_features, T]`` MFCCs, output ``[B, num_classes]``; any ``T`` works (global pool), so
    ``frames`` is accepted and ignored. The reference has no dropout (its placeholder is never applied), hence
    ``dropout=0.0`` before the head.
    """

    def __init__(self, num_classes: int, n_features: int = 10, frames: int | None = None, size: str = "S",
                 channels: int | None = None, blocks: int | None = None, dropout: float = 0.0,
                 time_padding: str = "same") -> None:
        super().__init__()
        del frames  # global pooling: any number of frames
        if size not in _SIZES:
            raise ValueError(f"DSCNN: size must be one of {sorted(_SIZES)}, got {size!r}")
        spec = _SIZES[size]
        channels = spec["channels"] if channels is None else channels
        blocks = spec["blocks"] if blocks is None else blocks
        # Conv biases are dropped: each conv feeds a BN whose shift does the same job (the reference keeps
        # both; its BNs learn no scale, ours do, so the trainable count comes out the same).
        same_time = time_padding == "same"
        layers: list[nn.Module] = [
            _same_pad((4, 10), time=same_time),
            nn.Conv2d(1, channels, (4, 10), stride=spec["stride"], bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        ]
        for i in range(blocks):
            layers += [
                nn.Conv2d(channels, channels, 3, stride=spec["ds_stride"] if i == 0 else 1, padding=(1, int(same_time)),
                          groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialises convs and the classifier with Xavier (Glorot uniform), biases with zeros.
        xavier_uniform(self, (nn.Conv2d, nn.Linear))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_dropout(self.features(x)))

    def stream_layers(self) -> list[nn.Module]:
        """The layers of :meth:`forward` in order, for :mod:`sctrain.inference.stateful`."""
        return [*self.features, self.head_dropout, self.head]


@dataclass
class DSCNNConfig:
    size: str = doc("S", "Hello Edge DS-CNN size: S, M or L (23k, 137k, 414k params)")
    dropout: float = doc(0.0, "dropout before the linear head")
    time_padding: str = doc("same", TIME_PADDING_DOC)

    def __post_init__(self) -> None:
        _require(self.size in ("S", "M", "L"), "model.dscnn.size", f"must be S, M or L, got {self.size!r}")
        _require(self.time_padding in TIME_PADDINGS, "model.dscnn.time_padding",
                 f"must be one of {', '.join(TIME_PADDINGS)}, got {self.time_padding!r}")
        _require_fraction(self.dropout, "model.dscnn.dropout")


@register_model("dscnn", config=DSCNNConfig, cpu_copy=FoldedChannelsLastNet, variants=VARIANTS, test_size={"size": "S"},
                features=FEATURES)
def build_dscnn(cfg, num_classes: int, n_features: int, frames: int) -> DSCNN:
    """DS-CNN S/M/L (Zhang et al. 2017, Hello Edge): depthwise-separable 2-D CNN."""
    return DSCNN(num_classes, n_features, frames, size=cfg.size, dropout=cfg.dropout, time_padding=cfg.time_padding)

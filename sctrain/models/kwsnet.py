"""``kwsnet``: the seed's keyword-spotting CNN (four 3x3 conv blocks), the default model family."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import FoldedChannelsLastNet
from sctrain.models.registry import register_model


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),  # BatchNorm supplies the bias
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        # ceil_mode keeps every map at least 1x1 whatever the feature size (64 mels x 101 frames ends at
        # 4x7 after four pools); it changes no parameter, only whether a ragged last row/column is pooled.
        nn.MaxPool2d(2, ceil_mode=True),
    )


class KWSNet(nn.Module):
    """Four conv blocks (width, 2w, 4w, 8w channels) -> global average pool -> dropout -> linear.

    Input ``[B, 1, n_mels, frames]`` features, output ``[B, num_classes]`` logits. The global pool makes
    it independent of the number of frames, so the same weights serve 1 s clips and streaming windows.
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        channels = [1, width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in zip(channels[:-1], channels[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_out keeps activation variance steady through conv -> BN -> ReLU stacks (He et al.).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # Small head weights: near-uniform initial predictions, so the first loss is ~log(C).
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


@dataclass
class KWSNetConfig:
    width: int = doc(32, "channels of the first conv block; blocks use width, 2w, 4w, 8w")
    dropout: float = doc(0.1, "dropout before the linear head")

    def __post_init__(self) -> None:
        _require(self.width >= 1, "model.kwsnet.width", f"must be >= 1, got {self.width}")
        _require_fraction(self.dropout, "model.kwsnet.dropout")


@register_model("kwsnet", config=KWSNetConfig, cpu_copy=FoldedChannelsLastNet, test_size={"width": 4})
def build_kwsnet(cfg, num_classes: int, n_features: int, frames: int) -> KWSNet:  # noqa: ARG001 - pools globally
    """The seed's CNN: four 3x3 conv blocks (width, 2w, 4w, 8w), global average pool, linear head."""
    return KWSNet(num_classes, width=cfg.width, dropout=cfg.dropout)

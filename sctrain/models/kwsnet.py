"""``kwsnet``: the seed's keyword-spotting CNN (four 3x3 conv blocks), the default model family."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import FoldedChannelsLastNet
from sctrain.models.registry import TIME_PADDING_DOC, TIME_PADDINGS, register_model


def _conv_block(in_ch: int, out_ch: int, valid_time: bool = False) -> nn.Sequential:
    return nn.Sequential(
        # BatchNorm supplies the bias. valid_time: no padding in time (model.kwsnet.time_padding).
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=(1, 0) if valid_time else 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        # ceil_mode keeps every map at least 1x1 whatever the feature size (64 mels x 101 frames ends at
        # 4x7 after four pools); it changes no parameter, only whether a ragged last row/column is pooled.
        # In time, a streaming network pools whole pairs only: a ragged last frame has its partner in the next hop.
        TimeFloorMaxPool2d(2) if valid_time else nn.MaxPool2d(2, ceil_mode=True),
    )


class TimeFloorMaxPool2d(nn.MaxPool2d):
    """``MaxPool2d(k, ceil_mode=True)`` in frequency, floor in time: a ragged last frame is dropped, not
    pooled alone, so the pooled frames do not depend on where the window ends (a stateful stream pools it
    with the frame the next hop brings)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__(kernel_size, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        return super().forward(x[..., : x.shape[-1] - (x.shape[-1] - k) % k])


class KWSNet(nn.Module):
    """Four conv blocks (width, 2w, 4w, 8w channels) -> global average pool -> dropout -> linear.

    Input ``[B, 1, n_mels, frames]`` features, output ``[B, num_classes]`` logits. The global pool makes
    it independent of the number of frames, so the same weights serve 1 s clips and streaming windows.
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.1, time_padding: str = "same") -> None:
        super().__init__()
        channels = [1, width, 2 * width, 4 * width, 8 * width]
        valid = time_padding == "valid"
        self.features = nn.Sequential(*(_conv_block(a, b, valid) for a, b in zip(channels[:-1], channels[1:])))
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

    def stream_layers(self) -> list[nn.Module]:
        """The layers of :meth:`forward` in order, for :mod:`sctrain.inference.stateful`."""
        return [*self.features, self.pool, nn.Flatten(1), self.dropout, self.head]


@dataclass
class KWSNetConfig:
    width: int = doc(32, "channels of the first conv block; blocks use width, 2w, 4w, 8w")
    dropout: float = doc(0.1, "dropout before the linear head")
    time_padding: str = doc("same", TIME_PADDING_DOC)

    def __post_init__(self) -> None:
        _require(self.width >= 1, "model.kwsnet.width", f"must be >= 1, got {self.width}")
        _require(self.time_padding in TIME_PADDINGS, "model.kwsnet.time_padding",
                 f"must be one of {', '.join(TIME_PADDINGS)}, got {self.time_padding!r}")
        _require_fraction(self.dropout, "model.kwsnet.dropout")


@register_model("kwsnet", config=KWSNetConfig, cpu_copy=FoldedChannelsLastNet, test_size={"width": 4})
def build_kwsnet(cfg, num_classes: int, n_features: int, frames: int) -> KWSNet:  # noqa: ARG001 - pools globally
    """The seed's CNN: four 3x3 conv blocks (width, 2w, 4w, 8w), global average pool, linear head."""
    return KWSNet(num_classes, width=cfg.width, dropout=cfg.dropout, time_padding=cfg.time_padding)

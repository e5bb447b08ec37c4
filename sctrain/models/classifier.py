"""The deployable unit: raw audio in, logits out, with the feature extraction inside the graph."""
from __future__ import annotations

from torch import Tensor, nn


class AudioClassifier(nn.Module):
    """Raw float audio ``[B, T]`` (or ``[T]``) in [-1, 1] -> logits: a front end
    (:class:`sctrain.audio.features.LogMel`), then any registered network.

    Prediction and export use it, so that a consumer cannot pair the weights with the wrong front end.
    """

    def __init__(self, features: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.net = net

    def forward(self, wave: Tensor) -> Tensor:
        return self.net(self.features(wave))

"""KWT, the Keyword Transformer: Berg, O'Connor & Tairum Cruz, "Keyword Transformer: A Self-Attention Model for
Keyword Spotting", Interspeech 2021 (arXiv 2104.00769); reference code github.com/ARM-software/keyword-transformer
(``kws_streaming/models/kws_transformer.py``, ``transformer_utils.py``; flags of the released KWT-1/2/3).

A ViT over time: every feature frame is one token (a 1 x F "time patch"), linearly embedded, with a learned
class token and learned positional embeddings; post-norm transformer encoder layers; the class token's final
state goes to a linear classifier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sctrain.config import _require, _require_fraction, doc
from sctrain.models.folding import PlainNet
from sctrain.models.registry import register_model

# The encoder of each released size: KWT-<size>.
SIZES: dict[str, dict] = {
    "1": {"dim": 64, "depth": 12, "heads": 1, "mlp_dim": 256},
    "2": {"dim": 128, "depth": 12, "heads": 2, "mlp_dim": 512},
    "3": {"dim": 192, "depth": 12, "heads": 3, "mlp_dim": 768},
}

# Parameters: the model summaries of the released KWT-1/2/3 (607,308 / 2,394,252 / 5,360,844; the README
# rounds them to 607K / 2.4M / 5.5M). Accuracy %: the README table (Speech Commands v2, 12 labels). The counts
# are for 98 frames (the reference front end does not centre its STFT); "frames" records that input length.
PAPER: dict[str, dict] = {
    "1": {"params": 607_308, "acc_v2": 97.7, "frames": 98},
    "2": {"params": 2_394_252, "acc_v2": 98.2, "frames": 98},
    "3": {"params": 5_360_844, "acc_v2": 98.7, "frames": 98},
}

# Flags of the released models: feature_type 'mfcc_tf', 40 DCT coefficients of 80 mel bands over 20-7600 Hz,
# 30 ms Hann window, 10 ms hop, 98 frames (uncentred). The paper calls the input a mel spectrogram.
FEATURES: dict = {"n_mfcc": 40, "n_mels": 80, "n_fft": 512, "win_length": 480, "hop_length": 160,
                  "f_min": 20.0, "f_max": 7600.0}

_INIT_STD = 0.02  # the reference's TruncatedNormal(stddev=0.02), cut at two standard deviations


class SelfAttention(nn.Module):
    """Multi-head self-attention with bias-free q/k/v projections and a biased output projection, as in the
    reference. Written with matmuls rather than fused attention so every exporter sees plain ops."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"KWT: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Post-norm by default (the reference's default, and what the released models use):
    x = LN(x + drop(attn(x))); x = LN(x + drop(mlp(x))). ``prenorm=True`` moves each LN before its sublayer."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, prenorm: bool = False) -> None:
        super().__init__()
        self.prenorm = prenorm
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.prenorm:  # fixed at construction, not data-dependent
            x = x + self.drop1(self.attn(self.norm1(x)))
            return x + self.drop2(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop1(self.attn(x)))
        return self.norm2(x + self.drop2(self.mlp(x)))


class KWT(nn.Module):
    """KWT with time-domain attention: ``frames`` tokens of ``n_features`` values each plus a class token.

    Input ``[B, 1, n_features, frames]``, output ``[B, num_classes]``. The positional embedding has
    ``frames + 1`` rows, so the network only accepts inputs of exactly ``frames`` frames.
    """

    def __init__(self, num_classes: int, n_features: int = 40, frames: int = 98, dim: int = 64, depth: int = 12,
                 heads: int = 1, mlp_dim: int = 256, dropout: float = 0.0, prenorm: bool = False,
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Linear(n_features, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, frames + 1, dim))
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, mlp_dim, dropout, prenorm) for _ in range(depth)))
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        def trunc_normal(t: Tensor) -> None:
            nn.init.trunc_normal_(t, std=_INIT_STD, a=-2 * _INIT_STD, b=2 * _INIT_STD)

        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        trunc_normal(self.cls_token)
        trunc_normal(self.pos_embed)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x.flatten(1, 2).transpose(1, 2))  # [B, 1, F, T] -> [B, T, F] -> [B, T, dim]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.layers(x)[:, 0]  # the class token's final state
        return self.head(self.head_dropout(x))


@dataclass
class KWTConfig:
    size: int = doc(1, "Keyword Transformer KWT-1, -2 or -3 (607k, 2.4M, 5.4M params)")
    dropout: float = doc(0.0, "dropout inside the encoder layers")

    def __post_init__(self) -> None:
        _require(self.size in (1, 2, 3), "model.kwt.size", f"must be 1, 2 or 3, got {self.size}")
        _require_fraction(self.dropout, "model.kwt.dropout")


@register_model("kwt", config=KWTConfig, cpu_copy=PlainNet, variants={size: {"size": int(size)} for size in SIZES},
                batchnorm=False, input="tokens", test_size={"size": 1}, features=FEATURES)
def build_kwt(cfg, num_classes: int, n_features: int, frames: int) -> KWT:
    """Keyword Transformer KWT-1/2/3 (Berg et al. 2021): a ViT over time-frame patches."""
    return KWT(num_classes, n_features, frames, **SIZES[str(cfg.size)], dropout=cfg.dropout)

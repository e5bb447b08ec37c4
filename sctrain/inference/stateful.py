"""A streaming model that keeps its state: one hop of audio and the state tensors in, logits and the new
state out, each hop computing only the frames it adds (in the spirit of kws_streaming's ``Stream`` layers).

What makes it equal to the windowed model, call by call:

- Features without per-window statistics or window edges: ``features.normalise: none`` (per-clip statistics
  change every frame at every hop) and ``features.center: false`` (a centred STFT reflect-pads the window's
  ends). Frame ``j`` of a window is then the STFT of ``n_fft`` samples that a stream has at the same place.
- A network without time padding: ``model.<family>.time_padding: valid`` (zero padding would make a window's
  edge frames differ from the stream's), whose time pools drop a ragged last frame.
- Every layer that slides over time (convolutions, pools, the STFT itself) keeps a buffer of the last input
  frames it has not finished with; the call concatenates it with the new frames and computes only the outputs
  those complete. The global average pool keeps the last ``N`` top-level frames (``N``: what a 1 s window
  has) and averages them.
- The grids agree: a layer with time stride ``s`` computes every ``s``-th output, so a window's outputs fall
  on the stream's only if the window starts on the stream's grid. Each buffer's initial length (one of ``s``
  values that give ``hop / s`` outputs per call) is chosen so that each layer's grid contains the first frame
  of every window that ends on a call, and the hop must be a multiple of the network's total time stride
  (kwsnet: 16 frames, 160 ms at the default 10 ms feature hop; DS-CNN-S: 2 frames of 20 ms).
- A stream starts with ``lead_in`` zero samples (``(-window) mod hop``), so that calls end where windows end:
  at ``window + k * hop`` samples of real audio, the windowed detector's scoring times. Calls before the first
  second fill the buffers; their logits are not a window's and are not used.

Families that declare their layers in order (``stream_layers()``: kwsnet, dscnn) and contain only time-
sliding layers with no time padding, pointwise layers and one global average pool can stream. TC-ResNet's
residual blocks add a shortcut to a body that, without padding, is 16 frames shorter: that needs a cropped
shortcut in the network itself, which the family does not have.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.features import LogMel, frame_count
from sctrain.inference.loading import LoadedModel
from sctrain.models.folding import fold_batchnorm
from sctrain.models.registry import model_section

# Layers that act on each frame alone: they stream as they are.
_POINTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Dropout)
_SLIDING = (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
STREAMING_FAMILIES = ("dscnn", "kwsnet")  # the families whose networks have stream_layers(); a test checks it
DEFAULT_HOP_MS = 100.0  # the stateful hop is the smallest multiple of the network's stride at least this long


class StreamingError(ValueError):
    """A checkpoint or hop that cannot stream with state; one line, naming the key to change."""


def _last(value) -> int:
    return value[-1] if isinstance(value, (tuple, list)) else value


def _time_window(layer: nn.Module) -> tuple[int, int] | None:
    """``(kernel, stride)`` in time of a layer that slides over time, None for one that does not; raises for a
    sliding layer that pads or dilates in time."""
    if not isinstance(layer, _SLIDING):
        return None
    if _last(layer.padding) != 0:
        raise StreamingError(f"a {type(layer).__name__} pads in time ({layer}): it cannot stream")
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d)) and _last(layer.dilation) != 1:
        raise StreamingError(f"a {type(layer).__name__} dilates in time ({layer}): not supported")
    return _last(layer.kernel_size), _last(layer.stride)


def _check_pointwise(layer: nn.Module) -> None:
    if isinstance(layer, nn.ZeroPad2d) and tuple(layer.padding[:2]) == (0, 0):
        return  # pads frequency only
    if not isinstance(layer, _POINTWISE):
        raise StreamingError(f"a {type(layer).__name__} before the global pool has no streaming form")


def streaming_problem(model: LoadedModel) -> str | None:
    """Why ``model`` cannot stream with state (one line naming the key to set), or None."""
    cfg = model.config
    if cfg.features.normalise != "none":
        return (f"features.normalise is {cfg.features.normalise!r}: per-window statistics change every frame at "
                f"every hop; train with features.normalise: none")
    if cfg.features.center:
        return ("features.center is true: a centred STFT reflect-pads each window's ends; train with "
                "features.center: false")
    if not hasattr(model.net, "stream_layers"):
        return (f"model family {cfg.model.name!r} has no stateful streaming form (families that have: "
                f"{', '.join(STREAMING_FAMILIES)})")
    padding = getattr(model_section(cfg.model), "time_padding", "valid")
    if padding != "valid":
        return (f"model.{cfg.model.name}.time_padding is {padding!r}: zero padding makes a window's edge frames "
                f"differ from a stream's; train with model.{cfg.model.name}.time_padding: valid")
    if CLIP_SAMPLES % cfg.features.hop_length:
        return f"features.hop_length {cfg.features.hop_length} does not divide the {CLIP_SAMPLES}-sample window"
    return None


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """The shapes and offsets of a stateful model for one checkpoint and hop (all counts in samples or frames)."""

    hop: int  # samples per call
    window: int  # samples of the windowed model's input (1 s)
    lead_in: int  # zero samples before the stream's first sample, so that calls end where windows end
    stride: int  # the network's total time stride, in feature frames
    sample_keep: int  # samples the front end carries from one call to the next
    keeps: tuple[int, ...]  # frames each time-sliding layer carries, in order (0: no state tensor)
    top_frames: int  # top-level frames a window averages
    state_shapes: tuple[tuple[int, ...], ...]  # every state tensor, in call order

    @property
    def hop_ms(self) -> float:
        return self.hop * 1000.0 / SAMPLE_RATE

    def to_dict(self) -> dict:
        return {"hop_samples": self.hop, "window_samples": self.window, "lead_in_samples": self.lead_in,
                "stride_frames": self.stride, "top_frames": self.top_frames,
                "states": [{"name": f"state_{i}", "shape": list(s)} for i, s in enumerate(self.state_shapes)]}


def _layers(model: LoadedModel) -> list[nn.Module]:
    problem = streaming_problem(model)
    if problem:
        raise StreamingError(f"checkpoint {model.path} cannot stream with state: {problem}")
    return _flat(fold_batchnorm(model.net).stream_layers())


def _flat(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """Nested ``nn.Sequential`` blocks opened into their layers."""
    return [leaf for layer in layers
            for leaf in (_flat(list(layer)) if isinstance(layer, nn.Sequential) else [layer])]


def network_stride(model: LoadedModel) -> int:
    """The product of the time strides before the global pool, in feature frames."""
    stride = 1
    for layer in _layers(model):
        if isinstance(layer, _GLOBAL_POOLS):
            break
        window = _time_window(layer)
        stride *= window[1] if window else 1
    return stride


def default_hop(model: LoadedModel) -> int:
    """The smallest multiple of the network's time stride that is at least :data:`DEFAULT_HOP_MS`, in samples."""
    step = network_stride(model) * model.config.features.hop_length
    return step * math.ceil(DEFAULT_HOP_MS * SAMPLE_RATE / 1000 / step)


class _Sliding(nn.Module):
    """A time-sliding layer with its buffer of ``keep`` input frames: ``(x, state) -> (y, new state)``."""

    def __init__(self, layer: nn.Module, kernel: int, stride: int, keep: int, new_frames: int) -> None:
        super().__init__()
        self.layer, self.keep = layer, keep
        used = (new_frames // stride - 1) * stride + kernel  # the frames the new outputs read
        self.used = used if used < keep + new_frames else None  # None: all of them (no crop op in the graph)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        full = torch.cat([state, x], dim=-1) if self.keep else x  # keep 0 (a pool whose kernel is its stride): no state
        y = self.layer(full if self.used is None else full[..., : self.used])
        return y, (full[..., full.shape[-1] - self.keep:] if self.keep else None)


class StatefulNet(nn.Module):
    """``(audio [1, hop], *states) -> (logits [1, labels], *new states)``: :class:`StreamPlan`'s model.

    ``features``: the checkpoint's :class:`LogMel` (``center`` false, not normalised), run on the carried
    samples and the new ones; ``layers``: the network's :meth:`stream_layers`, BatchNorm folded.
    """

    def __init__(self, features: LogMel, layers: Sequence[nn.Module], plan: StreamPlan) -> None:
        super().__init__()
        self.features, self.plan = features, plan
        new = plan.hop // features.cfg.hop_length
        steps: list[nn.Module] = []
        keeps = iter(plan.keeps)
        head: list[nn.Module] = []
        for i, layer in enumerate(layers):
            if isinstance(layer, _GLOBAL_POOLS):
                self.pool, head = layer, list(layers[i + 1:])
                break
            window = _time_window(layer)
            if window:
                steps.append(_Sliding(layer, *window, next(keeps), new))
                new //= window[1]
            else:
                steps.append(layer)
        self.steps = nn.ModuleList(steps)
        self.head = nn.Sequential(*head)
        self.eval()

    def forward(self, audio: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        full = torch.cat([states[0], audio], dim=-1)
        x = self.features.log_mel(full, center=False).transpose(-1, -2).unsqueeze(1)  # [1, 1, F, new frames]
        new_states = [full[:, full.shape[-1] - self.plan.sample_keep:]]
        i = 1
        for step in self.steps:
            if isinstance(step, _Sliding) and step.keep:
                x, state = step(x, states[i])
                new_states.append(state)
                i += 1
            elif isinstance(step, _Sliding):
                x, _ = step(x)
            else:
                x = step(x)
        # The network's own global average pool, over the last top_frames top-level frames (those of the window).
        kept = torch.cat([states[i], x], dim=-1)[..., -self.plan.top_frames:]
        return (self.head(self.pool(kept)), *new_states, kept)


def _align(kernel: int, stride: int, alpha: int, span: int, residue: int) -> int:
    """The buffer length ``P`` in ``[kernel - stride, kernel - 1]`` (at least 0) that puts the layer's outputs on
    the windows' grid: its first output starts at ``alpha - P * span`` (feature frames), which must be
    ``residue`` modulo ``span * stride``."""
    for keep in range(max(0, kernel - stride), kernel):
        if (alpha - keep * span - residue) % (span * stride) == 0:
            return keep
    raise StreamingError(f"a time layer of kernel {kernel} < stride {stride} cannot be aligned to the windows")


def plan_stream(model: LoadedModel, hop: int | None = None) -> StreamPlan:
    """The :class:`StreamPlan` of ``model`` at ``hop`` samples per call (default :func:`default_hop`);
    :class:`StreamingError` if the checkpoint or the hop cannot stream."""
    layers = _layers(model)
    fe = model.config.features
    window = CLIP_SAMPLES
    step = network_stride(model) * fe.hop_length
    hop = default_hop(model) if hop is None else hop
    if hop <= 0 or hop % step or hop > window:
        raise StreamingError(f"hop of {hop} samples ({hop * 1000 / SAMPLE_RATE:g} ms): a stateful "
                             f"{model.config.model.name} needs a multiple of {step} samples "
                             f"({step * 1000 / SAMPLE_RATE:g} ms: its time stride of {step // fe.hop_length} frames "
                             f"x features.hop_length {fe.hop_length}) up to {window}")
    lead_in = -window % hop
    # The front end: the samples carried make each call's frames start on the feature hop grid.
    sample_keep = math.ceil(fe.n_fft / fe.hop_length) * fe.hop_length - fe.hop_length
    bands = fe.n_mfcc or fe.n_mels
    residue = lead_in // fe.hop_length  # windows start at lead_in + k * hop samples: on this frame grid
    alpha, span, frames = -sample_keep // fe.hop_length, 1, frame_count(fe)
    shape = [1, 1, bands]  # [batch, channels, frequency] of each layer's input
    keeps, states = [], [(1, sample_keep)]
    probe = torch.zeros(1, 1, bands, frames)  # one window through the layers, for the channel and frequency sizes
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, _GLOBAL_POOLS):
                break
            window_of = _time_window(layer)
            if window_of:
                kernel, stride = window_of
                keep = _align(kernel, stride, alpha, span, residue)
                keeps.append(keep)
                if keep:
                    states.append((*shape, keep))
                alpha, span = alpha - keep * span, span * stride
            else:
                _check_pointwise(layer)
            probe = layer(probe)
            shape = list(probe.shape[:-1])
        else:
            raise StreamingError(f"{model.config.model.name}: no global average pool: the windowed model is not "
                                 "a mean over frames")
    top_frames = probe.shape[-1]
    if top_frames < 1:
        raise StreamingError(f"a {window}-sample window leaves no frame after the network's time layers")
    states.append((*shape, top_frames))
    return StreamPlan(hop, window, lead_in, span, sample_keep, tuple(keeps), top_frames, tuple(states))


def stateful_net(model: LoadedModel, hop: int | None = None) -> StatefulNet:
    """The PyTorch stateful model of ``model`` (see :func:`plan_stream`)."""
    plan = plan_stream(model, hop)
    return StatefulNet(model.features, _layers(model), plan)


class StatefulRunner:
    """A stateful model with its state: ``runner(chunk)`` takes ``hop`` float32 samples and returns the logits
    ``[labels]`` of the window that ends there; :meth:`reset` starts a new stream. ``labels``, ``hop`` and
    ``lead_in`` as in the :class:`StreamPlan`."""

    labels: list[str]
    hop: int
    lead_in: int
    window: int

    def reset(self) -> None:
        raise NotImplementedError

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchStateful(StatefulRunner):
    """:class:`StatefulNet` in PyTorch (eager, one thread as the caller sets)."""

    def __init__(self, model: LoadedModel, hop: int | None = None) -> None:
        # Channels-last 2-D weights: oneDNN's small convolutions run ~20 % faster per hop so (measured on kwsnet).
        self.net = stateful_net(model, hop).to(memory_format=torch.channels_last)
        plan = self.net.plan
        self.labels, self.hop, self.lead_in, self.window = list(model.labels), plan.hop, plan.lead_in, plan.window
        self.reset()

    def reset(self) -> None:
        self.states = [torch.zeros(shape) for shape in self.net.plan.state_shapes]

    @torch.inference_mode()
    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        out = self.net(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).reshape(1, -1), *self.states)
        self.states = list(out[1:])
        return out[0][0].numpy()


def run_stream(runner: StatefulRunner, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every window that ends on a call over ``wave`` (float32, from its first sample): ``(starts,
    logits [windows, labels])``, ``starts`` the windows' first samples (``0, hop, 2 * hop, ...``)."""
    runner.reset()
    padded = np.concatenate([np.zeros(runner.lead_in, np.float32), np.asarray(wave, np.float32)])
    starts, logits = [], []
    for end in range(runner.hop, len(padded) + 1, runner.hop):
        out = runner(padded[end - runner.hop: end])
        start = end - runner.lead_in - runner.window
        if start >= 0:
            starts.append(start)
            logits.append(out)
    return np.asarray(starts), np.stack(logits) if logits else np.zeros((0, len(runner.labels)), np.float32)


@torch.inference_mode()
def windowed_logits(model: LoadedModel, wave: np.ndarray, starts: np.ndarray, batch: int = 64) -> np.ndarray:
    """The windowed classifier's logits of the 1 s windows of ``wave`` starting at ``starts``."""
    windows = np.stack([wave[s: s + CLIP_SAMPLES] for s in starts]).astype(np.float32)
    return np.concatenate([model.classifier(torch.from_numpy(windows[i: i + batch])).numpy()
                           for i in range(0, len(windows), batch)])

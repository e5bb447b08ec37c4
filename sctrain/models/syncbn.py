"""BatchNorm over the global batch on any device: torch's SyncBatchNorm on GPUs, a gloo-friendly one on CPUs.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, yet the multi-process tests (and CPU clusters) run on the
CPU with gloo. :class:`GlobalBatchNorm2d` (and ``1d``) computes the same statistics with two differentiable all-reduces
(sum, then centred sum of squares), so its forward and backward equal one process's BatchNorm over the
concatenated batch. It subclasses ``nn.BatchNorm2d`` (``1d``): the state dict (and so every checkpoint) is unchanged.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks too: the gradient of the total
    loss (every rank's) with respect to this rank's input, as one process with the whole batch computes it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ARG004
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ARG004
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: Tensor) -> Tensor:
    return _AllReduceSum.apply(x)


class _GlobalStatistics:
    """``forward`` of a BatchNorm whose training statistics cover the batch of every rank (default group)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = (0, *range(2, x.dim()))  # every axis but the channels: [B, C], [B, C, L] and [B, C, H, W]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        # One all-reduce for the sums and the count (ranks may hold batches of different sizes).
        totals = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])]))
        count = totals[-1:]
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count  # two passes: no cancellation of sum(x^2) - n*mean^2
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class GlobalBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    """``BatchNorm1d`` with global-batch training statistics (state dict unchanged)."""


class GlobalBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    """``BatchNorm2d`` with global-batch training statistics (state dict unchanged)."""


_GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm for ``model``: torch's fused SyncBatchNorm on CUDA, else the classes above.

    Every ``nn.BatchNorm1d``/``2d`` is replaced, wherever it sits (SubSpectral Normalisation is one
    BatchNorm2d over channels x sub-bands, so it is covered too).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace_bn(model)


def _replace_bn(module: nn.Module) -> nn.Module:
    if type(module) in _GLOBAL:
        new = _GLOBAL[type(module)](module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        module.add_module(name, _replace_bn(child))
    return module

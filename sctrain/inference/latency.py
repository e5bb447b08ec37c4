"""Inference latency of a raw-audio classifier: batch-1 percentiles and large-batch throughput."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU model (for benchmark records), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host waits for the GPU so the clock measures the kernels


def time_calls(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 5) -> np.ndarray:
    """Wall-clock milliseconds of ``iters`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times[i] = (time.perf_counter() - start) * 1e3
    return times


def summarize(times_ms: np.ndarray, batch: int) -> dict:
    return {"batch": batch, "p50_ms": float(np.percentile(times_ms, 50)), "p95_ms": float(np.percentile(times_ms, 95)),
            "p99_ms": float(np.percentile(times_ms, 99)), "clips_per_s": float(batch * 1e3 / times_ms.mean())}


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, device: torch.device, large_batch: int = 256, iters: int = 50,
                    sample_rate: int = 16000) -> dict:
    """Batch-1 and large-batch timings of ``model`` (raw float audio [B, T] -> logits) on ``device``."""
    model = model.to(device).eval()
    one = torch.randn(1, sample_rate, device=device) * 0.1
    many = torch.randn(large_batch, sample_rate, device=device) * 0.1
    small = summarize(time_calls(lambda: model(one), device, iters), 1)
    big = summarize(time_calls(lambda: model(many), device, max(3, iters // 10), warmup=2), large_batch)
    return {"device": str(device), "batch1": small, "large_batch": big}


def latency_report(model: torch.nn.Module, large_batch: int = 256, iters: int = 50) -> dict:
    """CPU always (deployment target), and the GPU when one is present."""
    report = {"cpu": measure_latency(model, torch.device("cpu"), large_batch, iters)}
    if torch.cuda.is_available():
        report["cuda"] = measure_latency(model, torch.device("cuda"), large_batch, iters)
    model.to("cpu")
    return report

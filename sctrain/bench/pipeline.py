"""Input-pipeline throughput: the project's path against a per-sample, seed-style loader, on the same data.

``python -m sctrain.bench pipeline --root DIR [--workers 2 --batch 128 --batches 60 --json OUT]``

(a) project: packed int16 memmap -> ``ClipDataset.__getitems__`` (one gather per batch, written by the
    workers into a shared-memory ``BatchRing``) -> ``BalancedDistributedSampler`` -> DataLoader ->
    batched ``FrontEnd`` in train mode on the device (gain, shift, noise, log-mel, masking): model-ready
    ``[B, 1, n_mels, frames]`` features. On a CPU the front end uses the compiled kernels of
    ``sctrain.audio.cpu_kernels`` where they are built, as the trainer does (``machine.cpu_kernels`` in the
    output), and the process first calls ``keep_freed_memory()``, as the trainer does (forked reference
    workers inherit it too; measured effect on the reference: within 3 %).
(b) reference, in the seed's style: every DataLoader item reads its WAV with soundfile, pads or trims it,
    shifts it, adds noise, computes its own torchaudio log-mel and masks it, in a worker; default collate;
    ``WeightedRandomSampler``. Same features and augmentation settings, same worker count, same batch size.

Both are warmed up (workers started, first batches drawn) before timing, run from one long epoch (no
epoch-boundary stalls in either), and are timed alternately ``--repeats`` times; the median is reported.
``cpu_ms_per_clip`` (CPU time of the main process and its workers during the timed batches) is a check
that depends much less on what else runs on the machine: a real ratio shows up in it as well as in
wall-clock clips/s.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import soundfile as sf
import torch
import torchaudio

from sctrain.audio import cpu_kernels
from sctrain.audio.assets import AugmentAssets
from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.features import LOG_OFFSET, NORM_EPS, feature_shape
from sctrain.audio.frontend import FrontEnd
from sctrain.config import TASKS, AugmentConfig, ConfigError, DataConfig, FeatureConfig, load_config
from sctrain.data.dataset import clip_loader
from sctrain.data.pack import load_dataset, scan_config
from sctrain.data.sampler import BalancedDistributedSampler, class_balanced_weights
from sctrain.data.speechcommands import DatasetError, ensure_dataset
from sctrain.inference.latency import cpu_name
from sctrain.training.distributed import keep_freed_memory

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
PREFETCH_SLACK = 4  # batches per worker beyond the timed ones (> DataLoader's default prefetch_factor of 2)


# ------------------------------------------------------------------------------------- project path

class EpochChain(torch.utils.data.Sampler[int]):
    """Consecutive epochs of a ``BalancedDistributedSampler`` as one stream of ``length`` indices.

    The benchmark times a steady state: one long epoch for both pipelines keeps DataLoader restarts
    (which the training loop pays once per epoch) out of the figure.
    """

    def __init__(self, sampler: BalancedDistributedSampler, length: int) -> None:
        self.sampler, self.length = sampler, length

    def __iter__(self) -> Iterator[int]:
        left, epoch = self.length, 0
        while left > 0:
            self.sampler.set_epoch(epoch)
            shard = self.sampler.shard()[:left]
            left -= len(shard)
            epoch += 1
            yield from shard.tolist()

    def __len__(self) -> int:
        return self.length


class Pipeline:
    """A DataLoader and what turns each of its batches into model-ready features."""

    def __init__(self, loader: torch.utils.data.DataLoader, features_of: Callable[[object], torch.Tensor]) -> None:
        self.loader, self.features_of = loader, features_of


def project_pipeline(cfg_data: DataConfig, features: FeatureConfig, augment: AugmentConfig, batch: int,
                     workers: int, clips: int, device: torch.device) -> tuple[Pipeline, dict]:
    data = load_dataset(cfg_data, progress=False)
    split = data.split("train")
    sampler = BalancedDistributedSampler(split.labels, len(data.labels), seed=0, balanced=True)
    loader = clip_loader(split, batch, EpochChain(sampler, clips), workers, drop_last=True,
                         pin_memory=device.type == "cuda", generator=torch.Generator())
    frontend = FrontEnd(features, augment, AugmentAssets.for_config(augment, noise=data.background))
    frontend = frontend.to(device).train()

    def features_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return frontend(batch[0].to(device, non_blocking=True))

    return Pipeline(loader, features_of), {"train_clips": len(split), "labels": len(data.labels)}


# ----------------------------------------------------------------------------------- reference path

class SeedStyleDataset(torch.utils.data.Dataset):
    """One WAV per item: read, pad/trim, shift, noise, log-mel, normalise, mask -- all per sample.

    Written the way the seed (and most tutorials) do it, with the same settings as the project's front
    end, so the two pipelines do the same work and differ only in where and how it is done.
    """

    def __init__(self, root: Path, clips: list, background: list[np.ndarray], features: FeatureConfig,
                 augment: AugmentConfig) -> None:
        self.root, self.clips, self.background, self.aug = root, clips, background, augment
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=features.n_fft, win_length=features.win_length,
            hop_length=features.hop_length, f_min=features.f_min, f_max=features.f_max, n_mels=features.n_mels,
            power=2.0, center=True)
        self.freq_masking = torchaudio.transforms.FrequencyMasking(augment.freq_mask)
        self.time_masking = torchaudio.transforms.TimeMasking(augment.time_mask)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        clip, aug = self.clips[i], self.aug
        audio, _ = sf.read(str(self.root / clip.path), dtype="float32", start=clip.offset, frames=CLIP_SAMPLES)
        if len(audio) < CLIP_SAMPLES:
            audio = np.pad(audio, (0, CLIP_SAMPLES - len(audio)))
        wave = torch.from_numpy(audio[:CLIP_SAMPLES])
        if aug.gain_db > 0:
            wave = wave * 10 ** (random.uniform(-aug.gain_db, aug.gain_db) / 20)
        if random.random() < aug.shift_p:
            max_shift = int(aug.shift_max_ms * SAMPLE_RATE / 1000)
            shift = random.randint(-max_shift, max_shift)
            wave = torch.roll(wave, shift)
            if shift > 0:
                wave[:shift] = 0
            elif shift < 0:
                wave[shift:] = 0
        if random.random() < aug.noise_p:
            if self.background and random.random() < aug.background_p:
                rec = random.choice(self.background)
                start = random.randint(0, len(rec) - CLIP_SAMPLES)
                noise = torch.from_numpy(rec[start:start + CLIP_SAMPLES])
            else:
                noise = torch.randn(CLIP_SAMPLES)
            snr_db = random.uniform(aug.snr_db_min, aug.snr_db_max)
            scale = wave.pow(2).mean().sqrt().clamp_min(1e-6) / (noise.pow(2).mean().sqrt().clamp_min(1e-6)
                                                                * 10 ** (snr_db / 20))
            wave = wave + scale * noise
        spec = torch.log(self.mel(wave) + LOG_OFFSET)
        spec = (spec - spec.mean()) / (spec.std(unbiased=False) + NORM_EPS)
        spec = spec.unsqueeze(0)
        if random.random() < aug.mask_p:
            for _ in range(aug.num_masks):
                spec = self.time_masking(self.freq_masking(spec))
        return spec, clip.label


def _read_background(paths: list[Path]) -> list[np.ndarray]:
    out = []
    for p in paths:
        audio, _ = sf.read(str(p), dtype="float32")
        if audio.ndim == 1 and len(audio) >= CLIP_SAMPLES:
            out.append(audio)
    return out


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch per worker; the seed-style dataset also draws from Python's random.
    random.seed(torch.initial_seed() % 2 ** 32)


def reference_pipeline(cfg_data: DataConfig, features: FeatureConfig, augment: AugmentConfig, batch: int,
                       workers: int, clips: int) -> Pipeline:
    index = scan_config(cfg_data, ensure_dataset(cfg_data, progress=False), progress=False)
    train = index.splits["train"]
    labels = np.array([c.label for c in train], dtype=np.int64)
    weights = torch.from_numpy(class_balanced_weights(labels, len(index.labels)))
    dataset = SeedStyleDataset(index.root, train, _read_background(index.background), features, augment)
    sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=clips, replacement=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         drop_last=True, worker_init_fn=_seed_worker)
    return Pipeline(loader, lambda batch: batch[0])  # default collate: already [B, 1, n_mels, frames]


# ---------------------------------------------------------------------------------------- measuring

def _cpu_seconds(pids: list[int]) -> Optional[float]:
    """User+system CPU seconds of these live processes so far (Linux ``/proc``); None where unreadable."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def measure(make: Callable[[int], Pipeline], batch: int, batches: int, warmup: int, shape: tuple,
            device: torch.device, workers: int) -> dict:
    """Time ``batches`` batches after ``warmup`` batches.

    The stream runs ``PREFETCH_SLACK`` batches per worker past the timed ones, so the loader's prefetch
    queue is as full when timing stops as when it starts: the batches prefetched before the start are
    not free throughput. ``cpu_ms_per_clip`` counts the CPU time of the main process and its loader
    workers during the timed batches only (steady state), so it is comparable between pipelines even on
    a busy machine.
    """
    pipeline = make((warmup + batches + PREFETCH_SLACK * max(1, workers)) * batch)
    it = iter(pipeline.loader)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    for _ in range(warmup):
        first = pipeline.features_of(next(it))
    if tuple(first.shape) != shape:
        raise RuntimeError(f"pipeline produced batches of shape {tuple(first.shape)}, expected {shape}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cpu0, start, count = _cpu_seconds(pids), time.perf_counter(), 0
    for _ in range(batches):  # not to exhaustion: an exhausted loader stops its workers before we read them
        out = pipeline.features_of(next(it))
        count += len(out)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the host waits for the device: the last batch must be finished
    seconds = time.perf_counter() - start
    cpu1 = _cpu_seconds(pids)
    del it  # shuts the workers down
    if count != batches * batch:
        raise RuntimeError(f"pipeline delivered {count} clips, expected {batches * batch}")
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("pipeline produced non-finite features")
    cpu = None if cpu0 is None or cpu1 is None else 1000 * (cpu1 - cpu0) / count
    return {"clips_per_s": count / seconds, "seconds": seconds, "cpu_ms_per_clip": cpu}


def machine_info(device: torch.device) -> dict:
    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torchaudio": torchaudio.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device), "cpu_kernels": cpu_kernels.available(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info



def _median_or_none(values) -> Optional[float]:
    values = list(values)
    return None if any(v is None for v in values) else round(statistics.median(values), 3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sctrain.bench pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="SpeechCommands-layout folder (real or from python -m sctrain.synth)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None,
                   help="run config whose features/augment sections both pipelines use (default: configs/default.yaml)")
    p.add_argument("--task", default="all", choices=TASKS, help="label set (data.task)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both pipelines")
    p.add_argument("--batch", type=int, default=128, help="clips per batch")
    p.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=4, help="batches drawn before timing starts")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternating measurements of each pipeline; the median counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0 = torch's default)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the project's front end runs: auto (cuda if present), cpu, cuda")
    p.add_argument("--json", dest="json_out", help="also write the JSON line to this file")
    args = p.parse_args(argv)
    for name in ("batch", "batches", "warmup", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as the trainer does when it runs on the CPU (forked loader workers inherit it)
    try:
        cfg = load_config(args.config, [f"data.root={args.root}", f"data.task={args.task}", "data.download=false"])
        # Also packs the dataset (once) before anything is timed.
        _, meta = project_pipeline(cfg.data, cfg.features, cfg.augment, args.batch, 0, args.batch, device)
    except (ConfigError, DatasetError) as e:
        print(f"sctrain.bench pipeline: error: {e}", file=sys.stderr)
        return 2
    shape = (args.batch, 1, *feature_shape(cfg.features))
    info = machine_info(device)
    if info["load_avg_1m_at_start"] > 0.5 * (os.cpu_count() or 1):
        log.warning("the machine is busy (load %.1f on %d cores): both figures, the project's batched "
                    "threads most, will be low and unsteady", info["load_avg_1m_at_start"], os.cpu_count())
    makers = {
        "project": lambda n: project_pipeline(cfg.data, cfg.features, cfg.augment, args.batch, args.workers, n,
                                              device)[0],
        "reference": lambda n: reference_pipeline(cfg.data, cfg.features, cfg.augment, args.batch, args.workers, n),
    }
    runs: dict[str, list[dict]] = {name: [] for name in makers}
    for r in range(args.repeats):
        for name, make in makers.items():
            result = measure(make, args.batch, args.batches, args.warmup, shape, device, args.workers)
            runs[name].append(result)
            log.info("repeat %d/%d %-9s %7.0f clips/s  %s CPU ms/clip", r + 1, args.repeats, name,
                     result["clips_per_s"], f"{result['cpu_ms_per_clip']:.3f}" if result["cpu_ms_per_clip"] else "?")
    project = statistics.median(r["clips_per_s"] for r in runs["project"])
    reference = statistics.median(r["clips_per_s"] for r in runs["reference"])
    cpu_project = _median_or_none(r["cpu_ms_per_clip"] for r in runs["project"])
    cpu_reference = _median_or_none(r["cpu_ms_per_clip"] for r in runs["reference"])
    line = {
        "benchmark": "pipeline", "project_clips_per_s": round(project, 1), "reference_clips_per_s": round(reference, 1),
        "ratio": round(project / reference, 2),
        "project_cpu_ms_per_clip": cpu_project, "reference_cpu_ms_per_clip": cpu_reference,
        "cpu_ratio": round(cpu_reference / cpu_project, 2) if cpu_project and cpu_reference else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"root": str(args.root), "task": args.task, "train_clips": meta["train_clips"],
                     "workers": args.workers, "batch": args.batch, "batches": args.batches, "warmup": args.warmup,
                     "repeats": args.repeats, "config": args.config, "features": cfg.features.__dict__,
                     "augment": cfg.augment.__dict__, "feature_shape": list(shape)},
        "runs": {name: [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
                 for name, rs in runs.items()},
    }
    text = json.dumps(line)
    print(text, flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n")
    return 0

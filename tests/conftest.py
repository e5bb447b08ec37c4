"""Shared fixtures: a small generated dataset, the real-clip mini dataset and a model trained on it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import REPO, SHARED, train_on_one_thread

from sctrain.data.synthetic import write_synthetic_dataset


@pytest.fixture(params=["cpu_kernels", "pytorch"])
def cpu_implementation(request, monkeypatch) -> str:
    """Runs a test once with the compiled CPU kernels (sctrain.audio.cpu_kernels) and once with the PyTorch ops
    that GPUs use: the two must agree. The kernels' run is skipped where they are not built."""
    from sctrain.audio import cpu_kernels

    if request.param == "cpu_kernels" and cpu_kernels._cpu_kernels is None:
        pytest.skip("sctrain.audio._cpu_kernels is not built (no C compiler at install time)")
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "1" if request.param == "cpu_kernels" else "0")
    return request.param


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """6 words x 20 clips (20 speakers: 96 train, 12 validation, 12 test) + 3 noise files. Treat as read-only:
    copy it (shutil.copytree) before changing files; packing it writes only its .sctrain_cache."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "sc", words=6, per_word=20, seed=0)


@pytest.fixture
def synthetic_copy(synthetic_root, tmp_path) -> Path:
    """A private copy of the generated dataset, to change or damage (its pack cache left behind)."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "sc", ignore=shutil.ignore_patterns(".sctrain_cache")))


@pytest.fixture(scope="session")
def mini_root() -> Path:
    """1,192 real Speech Commands clips (8 words), read-only; skipped where the shared copy is absent."""
    root = SHARED / "data/speech_commands_mini"
    if not root.is_dir():
        pytest.skip(f"real-clip mini dataset not found at {root}")
    return root


# Settings of the inference tests' model: the keywords task, the mini set's eight words + _silence_ (cut from the
# background recordings, it is what lets a stream's pauses score as "no keyword"), a coarse 40-mel x 51-frame front end,
# no spectrogram masking so width 16 learns the 8 words in a few epochs (~88 % validation accuracy), and a
# time shift on every clip so the words are recognised across the offsets a sliding window sees them at.
INFER_MODEL_OVERRIDES = [
    "data.task=keywords", "data.num_workers=0", "features.n_mels=40", "features.hop_length=320",
    "augment.mask_p=0", "augment.shift_p=1.0", "augment.shift_max_ms=150", "train.epochs=8",
    "train.batch_size=32", "train.lr=0.01", "train.checkpoint_every=0",
    "latency.enabled=false", "tracking.report=false", "tracking.log_examples=0", "tracking.mode=disabled",
]


@pytest.fixture(scope="session")
def trained_checkpoint(mini_root, tmp_path_factory) -> Path:
    """best_sc.pt of a width-16 model trained in-process on the real-clip mini dataset (~1-2 min).

    Trained on one thread: on a shared, oversubscribed CI machine OpenMP's parallel regions stall on
    descheduled threads and take several times longer than a single thread."""

    from sctrain.config import load_config

    out = tmp_path_factory.mktemp("infer_model")
    cfg = load_config(REPO / "configs/debug.yaml",
                      [f"data.root={mini_root}", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'run'}",
                       *INFER_MODEL_OVERRIDES])
    train_on_one_thread(cfg)
    return out / "run" / "best_sc.pt"


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    """The trained checkpoint loaded for inference, once per test module."""
    from sctrain.inference.loading import load_model

    return load_model(trained_checkpoint)

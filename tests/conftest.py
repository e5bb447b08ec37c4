"""Shared fixtures: a small generated dataset and the real-clip mini dataset."""
from __future__ import annotations

from pathlib import Path

import pytest

from sctrain.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """6 words x 20 clips (20 speakers: 96 train, 12 validation, 12 test) + 3 noise files. Treat as read-only:
    copy it (shutil.copytree) before changing files; packing it writes only its .sctrain_cache."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "sc", words=6, per_word=20, seed=0)


@pytest.fixture(scope="session")
def mini_root() -> Path:
    """1,192 real Speech Commands clips (8 words), read-only; skipped where the shared copy is absent."""
    root = Path(__file__).resolve().parents[1].parent / "shared/data/speech_commands_mini"
    if not root.is_dir():
        pytest.skip(f"real-clip mini dataset not found at {root}")
    return root

"""Process-wide runtime settings, each checked in a fresh interpreter (they cannot be undone in this one)."""
from __future__ import annotations

import subprocess
import sys

import pytest

FRONT_END_PAGE_FAULTS = """
import resource, sys, torch
from sctrain.training.distributed import keep_freed_memory
from sctrain.config import AugmentConfig, FeatureConfig
from sctrain.audio.assets import AugmentAssets
from sctrain.audio.frontend import FrontEnd
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
frontend = FrontEnd(FeatureConfig(), AugmentConfig(), AugmentAssets(torch.randn(2, 32000))).train()
audio = torch.zeros(64, 16000, dtype=torch.int16)
for _ in range(10):
    frontend(audio)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    frontend(audio)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_stops_the_front_end_faulting_in_fresh_pages():
    # Seen here, per batch of 64 clips: with glibc's defaults either ~6,400 minor page faults or, when its
    # adaptive threshold happens to settle high enough, almost none; with the setting 0-400, every time.
    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FRONT_END_PAGE_FAULTS, mode], capture_output=True, text=True,
                             check=True)
        return float(out.stdout.split()[-1])

    kept = faults("keep")
    assert kept < 1000, f"{kept} page faults per batch with keep_freed_memory (glibc's defaults: {faults('default')})"

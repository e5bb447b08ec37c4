"""``python tests/support/stalled_save.py FROM_STEP SECONDS ARGS...``: ``python -m sctrain ARGS`` whose training-state
saves from step FROM_STEP on stall half-written for SECONDS (a truncated ``state.pt`` sits in the temporary
folder meanwhile): the window in which tests kill a run during a save. The production code has no hook for
this; the stall is patched in here, in the process under test."""
import io
import os
import sys
import time

import torch

from sctrain.training.checkpoint import files

FROM_STEP, SECONDS = int(sys.argv[1]), float(sys.argv[2])
_write = files._write_state_file


def _stalled_write(path, obj: dict) -> None:
    if obj["progress"]["global_step"] < FROM_STEP:
        return _write(path, obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(SECONDS)
        f.write(data[len(data) // 2:])
        f.flush()
        os.fsync(f.fileno())


files._write_state_file = _stalled_write

if __name__ == "__main__":
    from sctrain.__main__ import main

    sys.exit(main(sys.argv[3:]))

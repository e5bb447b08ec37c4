"""``python -m sctrain.bench NAME [args]``: each benchmark lives in its own module with a ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "pipeline": "input pipeline clips/s: packed arrays + device-side features vs a per-sample seed-style loader",
    "scaling": "the same short training with 1 and 2 processes: clips/s and scaling efficiency",
    "latency": "inference latency and throughput of a checkpoint: eager, compiled, ONNX Runtime",
    "models": "every model family: params, MACs, CPU latency, training clips/s, accuracy in a time budget",
    "deploy": "every deployable format (ONNX float/int8, TorchScript, LiteRT): size, test accuracy, agreement, latency",
    "stateful": "CPU time per hop of the stateful streaming model vs recomputing the window, same detections",
    "gpu": "the prepared GPU check: placement x compile x precision clips/s, time to accuracy, DDP launch, GPU tests",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: python -m sctrain.bench {%s} [--help]\n" % ",".join(BENCHMARKS))
        for name, text in BENCHMARKS.items():
            print(f"  {name:<9} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"sctrain.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

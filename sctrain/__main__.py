"""``python -m sctrain [SUBCOMMAND] ...`` and the ``sctrain`` console script.

Without a subcommand (``python -m sctrain --config FILE``, also under ``accelerate launch -m sctrain``) it
trains; ``sctrain predict|export|report|synth|tts|bench|tune|streameval|mine ...`` run the other entry points, each
also reachable as ``python -m sctrain.<name>``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional

SUBCOMMANDS = {
    "train": ("sctrain.cli.train", "train a model (the default: python -m sctrain --config FILE)"),
    "predict": ("sctrain.cli.predict", "classify audio files, or spot keywords in them with --stream"),
    "export": ("sctrain.cli.export", "export a checkpoint to ONNX, TorchScript or LiteRT (float or int8), checked"),
    "report": ("sctrain.cli.report", "regenerate a run's plots and report.md"),
    "synth": ("sctrain.cli.synth", "write a generated SpeechCommands-layout dataset"),
    "tts": ("sctrain.cli.tts", "write a keyword dataset from text with offline TTS engines"),
    "bench": ("sctrain.bench.__main__", "benchmarks: pipeline, scaling, latency, models"),
    "tune": ("sctrain.cli.tune", "search hyperparameters with Optuna, every trial an sctrain run (docs/tuning.md)"),
    "streameval": ("sctrain.cli.streameval", "keyword-spotting streams: hits, misses, false alarms per hour, DET"),
    "mine": ("sctrain.cli.mine", "hard-negative mining rounds on a trained detector, each fine-tuning on what fired"),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and argv[0] in SUBCOMMANDS else "train"
    if argv and argv[0] in ("commands", "--commands"):
        for command, (_, text) in SUBCOMMANDS.items():
            print(f"  {command:<10} {text}")
        return 0
    rest = argv[1:] if argv and argv[0] == name else argv
    return int(importlib.import_module(SUBCOMMANDS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Write a synthetic SpeechCommands-layout dataset: ``python -m sctrain.synth OUT [--words N ...]``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from sctrain.data.speechcommands import LIST_FILES, DatasetError
from sctrain.data.synthetic import WORDS, write_synthetic_dataset


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sctrain.synth", description=__doc__.split(":")[0])
    parser.add_argument("out", type=Path, help="folder to create (must be new or empty)")
    parser.add_argument("--words", type=int, default=8, help=f"word classes, 1..{len(WORDS)} (default 8)")
    parser.add_argument("--per-word", type=int, default=60, help="clips per word (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes (default 0)")
    parser.add_argument("--noise-files", type=int, default=3, help="background noise recordings (default 3)")
    parser.add_argument("--speakers", type=int, default=None, help="speakers (default max(20, per-word / 2))")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset at OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        out = write_synthetic_dataset(args.out, words=args.words, per_word=args.per_word, seed=args.seed,
                                      noise_files=args.noise_files, speakers=args.speakers,
                                      overwrite=args.overwrite)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    held = {split: len((out / name).read_text().splitlines()) for split, name in LIST_FILES.items()}
    total = args.words * args.per_word
    print(f"wrote {total} clips ({args.words} words x {args.per_word}; train {total - sum(held.values())}, "
          f"validation {held['validation']}, test {held['test']}) and {args.noise_files} noise files "
          f"to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

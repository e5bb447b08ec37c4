"""Write a keyword dataset from text with offline TTS: ``python -m sctrain.tts OUT --words hey_computer,stop``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from sctrain.data.speechcommands import DatasetError
from sctrain.tts.engines import ENGINES


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sctrain.tts", description=__doc__.split(":")[0])
    parser.add_argument("out", type=Path, help="folder to write (new, or one this command wrote: it continues it)")
    parser.add_argument("--words", required=True, help="keywords, comma-separated; _ joins the words of a phrase "
                                                       "(hey_computer is spoken 'hey computer')")
    parser.add_argument("--per-word", type=int, default=100, help="clips per keyword (default 100)")
    parser.add_argument("--negatives", type=int, default=0, help="clips of sound-alike and common words, spread "
                                                                 "over their own folders (_unknown_; default 0)")
    parser.add_argument("--engines", default="piper,espeak", help=f"comma-separated, of {', '.join(ENGINES)} "
                                                                  "(default piper,espeak)")
    parser.add_argument("--speakers", type=int, default=200, help="synthetic speakers (an engine voice with fixed "
                                                                  "settings each; default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speakers and every clip's draws (default 0)")
    parser.add_argument("--jobs", type=int, default=0, help="processes (default: one per CPU core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from sctrain.tts.writer import write_tts_dataset

    start = time.perf_counter()
    try:
        done = write_tts_dataset(args.out, [w.strip() for w in args.words.split(",") if w.strip()], args.per_word,
                                 args.negatives, tuple(e.strip() for e in args.engines.split(",") if e.strip()),
                                 args.seed, args.speakers, args.jobs, progress=True)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    speed = ", ".join(f"{name} {s['clips']} clips at {s['clips'] / s['seconds']:.1f}/s per process"
                      for name, s in done["engines"].items() if s["seconds"] > 0)
    print(f"{args.out}: made {done['made']} clips, {done['skipped']} already there"
          + (f", {done['silent']} silent (not written)" if done["silent"] else "")
          + f", in {time.perf_counter() - start:.1f} s" + (f" ({speed})" if speed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

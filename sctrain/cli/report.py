"""``python -m sctrain.report OUTPUT_DIR``: regenerate a run's PNG plots and report.md from its metrics.jsonl."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from sctrain.tracking import report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sctrain.report",
        description="Regenerate the PNG plots and report.md of a run from its metrics.jsonl (+ results.json).")
    parser.add_argument("output_dir", help="the run's output_dir (holds metrics.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s %(name)s: %(message)s")
    try:
        paths = report.write_report(args.output_dir)
    except report.ReportError as e:
        print(f"sctrain.report: error: {e}", file=sys.stderr)
        return 2
    except report.MatplotlibMissing as e:
        print(f"sctrain.report: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

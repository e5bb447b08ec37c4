"""``python -m sctrain.report``: kept where users expect it; the entry point is :mod:`sctrain.cli.report`."""
import sys

from sctrain.cli.report import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.export``: kept where users expect it; the entry point is :mod:`sctrain.cli.export`."""
import sys

from sctrain.cli.export import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.tune``: kept beside the other entry points; the code is :mod:`sctrain.cli.tune`."""
import sys

from sctrain.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())

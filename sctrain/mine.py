"""``python -m sctrain.mine``: the entry point is :mod:`sctrain.cli.mine`."""
import sys

from sctrain.cli.mine import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m sctrain.predict``: kept where users expect it; the entry point is :mod:`sctrain.cli.predict`."""
import sys

from sctrain.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())

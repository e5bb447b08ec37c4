"""``python -m sctrain.synth``: kept where users expect it; the entry point is :mod:`sctrain.cli.synth`."""
import sys

from sctrain.cli.synth import main

if __name__ == "__main__":
    sys.exit(main())

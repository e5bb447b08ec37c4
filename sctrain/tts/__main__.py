"""``python -m sctrain.tts``: the entry point is :mod:`sctrain.cli.tts`."""
import sys

from sctrain.cli.tts import main

if __name__ == "__main__":
    sys.exit(main())

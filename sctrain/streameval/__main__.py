import sys

from sctrain.streameval.cli import main

sys.exit(main())

import sys

from sctrain.cli.streameval import main

sys.exit(main())

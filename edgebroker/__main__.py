"""`python -m edgebroker` runs the broker, as the `edgebroker` command does."""
import sys

from .cli.broker import main

sys.exit(main())

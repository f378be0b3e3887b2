"""``python -m core``: the headless command line tool."""

import sys

from .cli import main

sys.exit(main())

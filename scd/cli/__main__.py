"""`python -m scd.cli ...`: the `scd` command, as `python -m scd`."""

import sys

from . import main

sys.exit(main())

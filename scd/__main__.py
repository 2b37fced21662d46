"""`python -m scd ...` (and `torchrun ... -m scd train ...`): the `scd` command."""

import sys

from .cli import main

sys.exit(main())

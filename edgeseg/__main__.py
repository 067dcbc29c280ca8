"""``python -m edgeseg`` (and ``torchrun ... -m edgeseg train ...``)."""

import sys

from edgeseg.cli import main

sys.exit(main())

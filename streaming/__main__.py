"""``python -m streaming serve ...``: same as the `causalcast` console script."""

import sys

from streaming.cli import main

sys.exit(main())

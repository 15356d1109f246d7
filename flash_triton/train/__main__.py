"""``python -m flash_triton.train``."""

import sys

from .cli import main

sys.exit(main())

"""``python -m jetspec_compile.train train-head ...``."""

import sys

from .cli import main

sys.exit(main())

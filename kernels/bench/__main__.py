"""`python -m kernels.bench` (see kernels/bench/__init__.py)."""

import sys

from kernels.bench.cli import main

sys.exit(main())

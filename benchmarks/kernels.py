"""Kernel benchmarks: a thin entry point for `python -m kernels.bench` (same flags).

Usage: python benchmarks/kernels.py [--json FILE] [--profile DIR] [...]; results go to
docs/benchmarks.md (## Kernels).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

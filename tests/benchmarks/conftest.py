"""The benchmark scripts live in ``benchmarks/`` at the repository root, outside the package: put
the root on ``sys.path`` so that ``import benchmarks.<name>`` works under a bare ``pytest`` too
(``python -m pytest`` adds the working directory itself)."""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)

"""The example trainer lives at the repository root (`trainer_examples/`), outside the
installed packages: put the root on sys.path so its modules import in-process too."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

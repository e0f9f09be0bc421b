"""Fleet-mirror tests reuse the fake upstream registry of tests/upstream and whole in-process servers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "upstream"))

"""limit_arenas caps glibc's malloc arenas unless the operator set MALLOC_ARENA_MAX."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "from ipfsreg.malloc import limit_arenas; print(limit_arenas())"


def _run(env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_limit_arenas_applies_on_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _run(env) == "True"


def test_limit_arenas_leaves_an_operator_setting_alone() -> None:
    assert _run({**os.environ, "MALLOC_ARENA_MAX": "4"}) == "False"

"""Runs skopeo against the registries in the tests (ipfsreg.registry.testing serves ipfsreg)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio

SKOPEO = "skopeo"


def policy_file(directory: Path) -> Path:
    """A signature policy that accepts anything (test images are unsigned)."""
    path = directory / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


async def skopeo(*args: str, policy: Path, time_limit: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo (fails the test with its stderr if it exits non-zero)."""
    command = [SKOPEO, "--policy", str(policy), *args]
    with trio.fail_after(time_limit):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-2000:]}"
        )
    return result


async def skopeo_status(
    *args: str, policy: Path, time_limit: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo and return the result whatever its exit status."""
    with trio.fail_after(time_limit):
        return await trio.run_process(
            [SKOPEO, "--policy", str(policy), *args], capture_stdout=True, capture_stderr=True, check=False
        )

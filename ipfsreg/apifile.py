"""The control API's settings, and where a running server advertises it: the ``api`` file in the data
dir (as Kubo does).

Kept free of heavy imports: every CLI command reads it before deciding how to run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

API_FILENAME: Final = "api"
PREFIX: Final = "/api/v0"


@dataclass(frozen=True)
class ApiSettings:
    listen: str = field(
        default="127.0.0.1:0",
        metadata={"help": "HOST:PORT of the local control API used by CLI commands (port 0: any free port)"},
    )


def write_api_file(data_dir: Path, url: str) -> Path:
    path = data_dir / API_FILENAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)
    return path


def read_api_file(data_dir: Path) -> str | None:
    try:
        text = (data_dir / API_FILENAME).read_text().strip()
    except OSError:
        return None
    return text or None


def remove_api_file(data_dir: Path, url: str) -> None:
    """Remove the api file if it still names this server (a newer server may have replaced it)."""
    if read_api_file(data_dir) == url:
        (data_dir / API_FILENAME).unlink(missing_ok=True)

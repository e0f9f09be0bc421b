"""Repository-name and tag grammar of the distribution spec, as pure checks."""

from __future__ import annotations

import re
from typing import Final

from ipfsreg.registry.errors import RegistryError

_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE: Final = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH: Final = 255


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return ``name`` or raise NAME_INVALID."""
    if not is_valid_name(name):
        raise RegistryError("NAME_INVALID", {"name": name[:300]})
    return name


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None

"""Pure mapping of ``/v2/...`` request paths to the registry's route families."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_PATTERNS: Final = (
    ("base", re.compile(r"/v2/?")),
    ("catalog", re.compile(r"/v2/_catalog")),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list")),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)")),
    ("uploads", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?")),
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<ref>[^/]+)")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<ref>[^/]+)")),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<ref>[^/]+)")),
)

ALLOWED_METHODS: Final = {
    "base": ("GET", "HEAD"),
    "catalog": ("GET",),
    "tags": ("GET",),
    "manifest": ("GET", "HEAD", "PUT", "DELETE"),
    "uploads": ("POST",),
    "upload": ("GET", "PATCH", "PUT", "DELETE"),
    "blob": ("GET", "HEAD", "DELETE"),
    "referrers": ("GET",),
}


@dataclass(frozen=True)
class Route:
    kind: str
    name: str = ""
    ref: str = ""


def match_route(path: str) -> Route | None:
    """The route for ``path`` (names may contain slashes, so suffixes decide), or None."""
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(path)
        if match is not None:
            groups = match.groupdict()
            return Route(kind, groups.get("name") or "", groups.get("ref") or "")
    return None

"""Which upstream serves a namespaced repository: ``[[mirror.upstream]]`` entries, then the default rule.

Pure: settings and names in, a route out. A repository pulled through registry ``ns`` lives in the
store as ``<ns>/<name>`` (see ``ipfsreg.registry.names.qualified_name``); this module says where its
misses go and under which name the upstream knows it.

- Every entry whose ``registry`` is ``ns`` is a candidate; an entry's ``repositories`` are name
  prefixes (none: every repository). The candidate with the longest matching prefix wins, so
  ``myorg/`` with its own credentials beats a catch-all entry for the same registry.
- A registry that has entries but none matching the name has no upstream for it (an explicit list
  is a restriction). A registry with no entry uses ``default_url`` when it is set.
- Docker Hub's API is at ``registry-1.docker.io``, not ``docker.io``: the default URL of ``docker.io``
  says so, as containerd's own default does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ipfsreg.mirror.settings import MirrorSettings, UpstreamSettings
from ipfsreg.registry.names import DOCKER_HUB, canonical_namespace

DOCKER_HUB_HOST: Final = "registry-1.docker.io"


@dataclass(frozen=True)
class UpstreamRoute:
    """Where misses of one namespaced repository go."""

    namespace: str
    url: str
    remote: str  # the repository's name at the upstream
    private: bool = False
    tag_ttl: float | None = None
    username: str = ""
    password: str = ""
    token_file: Path | None = None

    @property
    def client_key(self) -> tuple[str, str, str, str]:
        """Routes with equal keys share one upstream client (its connections and tokens)."""
        return (self.url, self.username, self.password, str(self.token_file or ""))


def api_host(namespace: str) -> str:
    """The host serving registry ``namespace``'s distribution API."""
    return DOCKER_HUB_HOST if namespace == DOCKER_HUB else namespace


def default_url(template: str, namespace: str) -> str:
    return template.replace("{ns}", api_host(namespace)).rstrip("/")


def _matches(name: str, prefix: str) -> bool:
    return name.startswith(prefix)


def route(settings: MirrorSettings, namespace: str, name: str) -> UpstreamRoute | None:
    """Where misses of ``name`` pulled through ``namespace`` (a canonical host) go; None: local and peers."""
    entries = [u for u in settings.upstream if canonical_namespace(u.registry) == namespace]
    best: UpstreamSettings | None = None
    best_length = -1
    for entry in entries:
        for prefix in entry.repositories or [""]:
            if _matches(name, prefix) and len(prefix) > best_length:
                best, best_length = entry, len(prefix)
    if best is not None:
        url = (best.url or f"https://{api_host(namespace)}").rstrip("/")
        return UpstreamRoute(
            namespace,
            url,
            best.upstream_prefix + name,
            private=best.private,
            tag_ttl=best.tag_ttl,
            username=best.username,
            password=best.password,
            token_file=best.token_file,
        )
    if entries or not settings.default_url:
        return None
    return UpstreamRoute(namespace, default_url(settings.default_url, namespace), name)


def mirrored_namespaces(settings: MirrorSettings) -> list[str]:
    """The registries listed in ``[[mirror.upstream]]``, canonical and in order, each once."""
    seen: list[str] = []
    for entry in settings.upstream:
        host = canonical_namespace(entry.registry)
        if host is not None and host not in seen:
            seen.append(host)
    return seen


def path_namespace(settings: MirrorSettings, name: str) -> tuple[str, str] | None:
    """``(ns, rest)`` for a name without ``?ns=`` whose first component is a mirrored registry.

    CRI-O and podman send no ``ns``: a mirror location ``HOST/docker.io`` makes them ask for
    ``docker.io/library/x``, the very repository ``?ns=docker.io`` names ``library/x``.
    """
    first, sep, rest = name.partition("/")
    if not sep or not rest:
        return None
    host = canonical_namespace(first)
    if host is None or host != first:
        return None
    if host in mirrored_namespaces(settings) or settings.default_url:
        return host, rest
    return None


def private_namespaces(settings: MirrorSettings) -> frozenset[str]:
    """Registries with at least one private entry (their content is handled as private)."""
    return frozenset(
        host
        for entry in settings.upstream
        if entry.private and (host := canonical_namespace(entry.registry)) is not None
    )


def check_settings(settings: MirrorSettings) -> list[str]:
    """Problems of the upstream list a user should hear about at start-up (each one line)."""
    problems: list[str] = []
    for entry in settings.upstream:
        if canonical_namespace(entry.registry) is None:
            problems.append(
                f"mirror.upstream registry {entry.registry!r} is not a registry host "
                "(it needs a dot or a port, or is localhost)"
            )
        if entry.token_file is not None and entry.password:
            problems.append(f"mirror.upstream {entry.registry}: give password or token_file, not both")
    return problems

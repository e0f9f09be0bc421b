"""Settings of the fleet mirror (TOML section ``[mirror]``, upstreams as ``[[mirror.upstream]]`` tables).

Kept free of heavy imports: the config loader imports every layer's settings on each command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ipfsreg.config import ConfigError


@dataclass(frozen=True)
class UpstreamSettings:
    """One upstream registry: requests with ``?ns=<registry>`` (or names ``<registry>/...``) pull from it."""

    registry: str = field(metadata={"help": "the registry host clients name (the ns value), e.g. docker.io"})
    url: str = field(
        default="", metadata={"help": "base URL of its distribution API; empty = https://<registry>"}
    )
    username: str = field(default="", metadata={"help": "username for the upstream (Basic or token flow)"})
    password: str = field(default="", metadata={"help": "password for the upstream"})
    token_file: Path | None = field(
        default=None,
        metadata={
            "help": "file holding the password (with username) or a bearer token (without); re-read "
            "when it changes, as mounted pull secrets are"
        },
    )
    repositories: list[str] = field(
        default_factory=list,
        metadata={
            "help": "repository prefixes this entry serves (e.g. 'myorg/'); empty = every repository; "
            "the longest matching prefix of all entries for a registry wins"
        },
    )
    upstream_prefix: str = field(
        default="",
        metadata={"help": "prepended to the repository name at the upstream (e.g. a proxy project 'hub/')"},
    )
    private: bool = field(
        default=False,
        metadata={
            "help": "its content needs pull secrets: never provided on the DHT, never served to peers "
            "unless this node runs in a private swarm (a swarm key: [node] swarm_key or DATA/swarm.key)"
        },
    )
    tag_ttl: float | None = field(
        default=None,
        metadata={"help": "seconds a tag is trusted before asking again; default [mirror] tag_ttl"},
    )

    def __post_init__(self) -> None:
        if not self.registry:
            raise ConfigError("mirror.upstream: registry must not be empty")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"mirror.upstream {self.registry}: url must start with http:// or https://")
        if self.tag_ttl is not None and self.tag_ttl < 0:
            raise ConfigError(f"mirror.upstream {self.registry}: tag_ttl must be >= 0")


@dataclass(frozen=True)
class MirrorSettings:
    upstream: list[UpstreamSettings] = field(
        default_factory=list,
        metadata={"help": "upstream registries ([[mirror.upstream]] tables; env: a JSON array of objects)"},
    )
    default_url: str = field(
        default="",
        metadata={
            "help": "URL template for registries not listed, '{ns}' replaced by the registry host "
            "(docker.io: registry-1.docker.io), e.g. 'https://{ns}'; empty = only listed registries"
        },
    )
    tag_ttl: float = field(
        default=60.0,
        metadata={
            "help": "seconds a tag resolved upstream is trusted before a HEAD asks again; when the "
            "upstream cannot answer, the last known digest is served (header Ipfsreg-Tag-Stale)"
        },
    )
    upstream_timeout: float = field(
        default=10.0,
        metadata={
            "help": "seconds an upstream gets to answer a manifest or tag request, or to start a blob; "
            "a miss nobody serves within it (plus peer_timeout) is a 404"
        },
    )
    peers: bool = field(
        default=True, metadata={"help": "ask fleet peers for a missing blob before the upstream"}
    )
    peer_timeout: float = field(
        default=3.0,
        metadata={
            "help": "seconds to find a peer that has (or is fetching) a missing blob, or a claimant to follow"
        },
    )
    peer_stall_timeout: float = field(
        default=10.0,
        metadata={
            "help": "seconds without progress before a peer serving a blob is dropped for the next source"
        },
    )
    claim_settle: float = field(
        default=0.25,
        metadata={
            "help": "seconds a node that sees other claimants of the same missing blob waits for more "
            "claims before the fleet's rule picks one upstream fetcher"
        },
    )

    def __post_init__(self) -> None:
        for name in ("tag_ttl", "upstream_timeout", "peer_timeout", "peer_stall_timeout", "claim_settle"):
            if getattr(self, name) < 0:
                raise ConfigError(f"mirror.{name} must be >= 0")
        if self.default_url and not self.default_url.startswith(("http://", "https://")):
            raise ConfigError("mirror.default_url must start with http:// or https://")

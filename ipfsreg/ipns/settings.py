"""Settings of the IPNS layer: ``[ipns]``, with ``[[ipns.bind]]`` and ``[[ipns.follow]]`` tables."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipfsreg.config import ConfigError


@dataclass(frozen=True)
class BindRule:
    """Repositories (a name or an fnmatch glob) whose tags are published under one key's IPNS name."""

    repository: str = field(default="", metadata={"help": "repository name or glob, e.g. 'team/*'"})
    key: str = field(default="self", metadata={"help": "key name (`ipfsreg key list`); 'self' is the node's"})

    def __post_init__(self) -> None:
        if not self.repository:
            raise ConfigError("ipns.bind: a rule needs a repository (name or glob)")
        if self.repository.startswith(("ipfs/", "ipns/")):
            raise ConfigError(f"ipns.bind: {self.repository} is read-only and cannot be published")


@dataclass(frozen=True)
class FollowRule:
    """An IPNS name this node mirrors: every new tag it sees is pulled (manifests and blobs)."""

    name: str = field(default="", metadata={"help": "the IPNS name (k51...) to follow"})
    poll: float = field(default=60.0, metadata={"help": "seconds between resolutions of the name"})
    repository: str = field(
        default="", metadata={"help": "only this repository of the name ('' = every repository it holds)"}
    )
    local: str = field(
        default="",
        metadata={
            "help": "also tag the images into this local repository (needs repository); they are always "
            "served as ipns/<name>/<repository>:<tag>"
        },
    )

    def __post_init__(self) -> None:
        from ipfsreg.ipns.record import IpnsError, IpnsName

        try:
            IpnsName.parse(self.name)
        except IpnsError as exc:
            raise ConfigError(f"ipns.follow: {exc}") from None
        if self.poll <= 0:
            raise ConfigError(f"ipns.follow: poll must be > 0 seconds, got {self.poll}")
        if self.local and not self.repository:
            raise ConfigError("ipns.follow: local needs repository (which repository of the name to tag)")


@dataclass(frozen=True)
class IpnsSettings:
    lifetime: float = field(
        default=48 * 3600.0,
        metadata={"help": "seconds a published record stays valid (DHT peers keep records 48 h at most)"},
    )
    ttl: float = field(
        default=60.0, metadata={"help": "seconds resolvers may cache a record of ours (the record's TTL)"}
    )
    republish_interval: float = field(
        default=4 * 3600.0, metadata={"help": "seconds between republications of every published name"}
    )
    resolve_timeout: float = field(
        default=30.0, metadata={"help": "seconds a resolution waits for the routing system"}
    )
    v1_compatible: bool = field(
        default=True, metadata={"help": "also write the legacy V1 fields and signatureV1 (old readers)"}
    )
    bind: list[BindRule] = field(
        default_factory=list,
        metadata={
            "help": "[[ipns.bind]] tables: repository (name or glob) and key, published on tag changes"
        },
    )
    follow: list[FollowRule] = field(
        default_factory=list,
        metadata={"help": "[[ipns.follow]] tables: name, poll, repository, local; mirrored as they change"},
    )

    def __post_init__(self) -> None:
        if self.lifetime <= 0 or self.ttl < 0:
            raise ConfigError("ipns.lifetime must be > 0 and ipns.ttl >= 0")
        if not 0 < self.republish_interval < self.lifetime:
            raise ConfigError(
                f"ipns.republish_interval ({self.republish_interval}) must be > 0 and below the lifetime "
                f"({self.lifetime}), or records expire before they are republished"
            )
        if self.resolve_timeout <= 0:
            raise ConfigError("ipns.resolve_timeout must be > 0")

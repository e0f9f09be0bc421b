"""Settings of content routing: delegated routing over HTTP (Routing V1) as client and server."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipfsreg.config import ConfigError


@dataclass(frozen=True)
class RoutingSettings:
    http_routers: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Routing V1 HTTP endpoints (IPNI, someguy; base URL without /routing/v1) asked for"
            " providers, peers and IPNS records alongside the DHT"
        },
    )
    http_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds a lookup waits for the HTTP routers before it ends with what it has"},
    )
    http_api: bool = field(
        default=True,
        metadata={"help": "serve the Routing V1 HTTP API (/routing/v1/...) on the registry port"},
    )

    def __post_init__(self) -> None:
        for url in self.http_routers:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"routing.http_routers: {url!r} is not an http:// or https:// URL")
        if not self.http_timeout > 0:
            raise ConfigError(f"routing.http_timeout must be positive, got {self.http_timeout}")

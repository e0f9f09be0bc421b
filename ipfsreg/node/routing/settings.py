"""Settings of content and peer routing: the DHT's mode, bootstrap peers, provide strategy and bounds;
delegated routing over HTTP (Routing V1) as client and server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ipfsreg.config import ConfigError

# The public Amino DHT's bootstrap peers (go-libp2p-kad-dht amino/defaults.go, Kubo's
# config.DefaultBootstrapAddresses). Used only when an operator writes `bootstrap = "amino"`.
AMINO_BOOTSTRAP: Final = (
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
)
AMINO_PRESET: Final = "amino"
MODES: Final = ("auto", "server", "client")
PROVIDE_STRATEGIES: Final = ("roots", "all", "none")


@dataclass(frozen=True)
class RoutingSettings:
    mode: str = field(
        default="auto",
        metadata={
            "help": "DHT mode: server answers other peers' queries and stores records; client only asks; "
            "auto is server on the LAN DHT, and on the public DHT when a listen address is public"
        },
    )
    bootstrap: list[str] = field(
        default_factory=list,
        metadata={
            "help": 'DHT peers to join through (multiaddrs with /p2p/<id>); "amino" names the public '
            "IPFS bootstrap peers. Empty: the node joins no network unless peers connect to it"
        },
    )
    lan_dht: bool = field(
        default=True, metadata={"help": "run the LAN DHT (/ipfs/lan/kad/1.0.0): peers on private addresses"}
    )
    wan_dht: bool = field(
        default=True, metadata={"help": "run the public DHT (/ipfs/kad/1.0.0): peers on public addresses"}
    )
    provide_strategy: str = field(
        default="roots",
        metadata={
            "help": "what is announced and reprovided: roots (blob, manifest and image directory CIDs, "
            "pins, added roots), all (also every block), none"
        },
    )
    reprovide_interval: float = field(
        default=22 * 3600.0, metadata={"help": "seconds between reprovides (provider records live 48 h)"}
    )
    provider_record_ttl: float = field(
        default=48 * 3600.0, metadata={"help": "seconds a provider record received from a peer is kept"}
    )
    lookup_timeout: float = field(
        default=10.0, metadata={"help": "upper bound in seconds of one DHT lookup (providers, peers, values)"}
    )
    request_timeout: float = field(
        default=5.0, metadata={"help": "seconds to wait for one DHT peer's answer"}
    )
    dial_timeout: float = field(
        default=5.0, metadata={"help": "seconds to connect to a peer found through the DHT"}
    )
    alpha: int = field(default=10, metadata={"help": "DHT requests in flight per lookup (Kubo: 10)"})
    provider_search_delay: float = field(
        default=1.0,
        metadata={
            "help": "seconds a fetch waits for connected peers before asking the DHT for providers "
            "(it asks at once when every connected peer said DONT_HAVE)"
        },
    )
    max_provider_records: int = field(
        default=100_000, metadata={"help": "provider records from other peers kept at most (LevelDB)"}
    )
    max_value_records: int = field(
        default=10_000, metadata={"help": "value records (/pk/, /ipns/) kept at most (LevelDB)"}
    )
    add_provider_rate: float = field(
        default=100.0, metadata={"help": "ADD_PROVIDER messages accepted per second from one peer"}
    )
    add_provider_burst: int = field(
        default=2000, metadata={"help": "ADD_PROVIDER messages one peer may send in a burst"}
    )
    refresh_interval: float = field(
        default=600.0, metadata={"help": "seconds between routing table refreshes"}
    )
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
        if self.mode not in MODES:
            raise ConfigError(f"routing.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.provide_strategy not in PROVIDE_STRATEGIES:
            raise ConfigError(
                f"routing.provide_strategy must be one of {', '.join(PROVIDE_STRATEGIES)}, "
                f"got {self.provide_strategy!r}"
            )
        for name in ("reprovide_interval", "provider_record_ttl", "lookup_timeout", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"routing.{name} must be positive")
        if self.alpha < 1:
            raise ConfigError("routing.alpha must be at least 1")
        for url in self.http_routers:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"routing.http_routers: {url!r} is not an http:// or https:// URL")
        if not self.http_timeout > 0:
            raise ConfigError(f"routing.http_timeout must be positive, got {self.http_timeout}")

    def bootstrap_addrs(self) -> list[str]:
        """``bootstrap`` with the ``amino`` preset expanded."""
        addrs: list[str] = []
        for entry in self.bootstrap:
            for addr in AMINO_BOOTSTRAP if entry.strip() == AMINO_PRESET else (entry.strip(),):
                if addr and addr not in addrs:
                    addrs.append(addr)
        return addrs

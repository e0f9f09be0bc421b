"""Settings of the embedded IPFS node (listen addresses, peering, bitswap limits and windows)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeSettings:
    p2p_listen: list[str] = field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"],
        metadata={"help": "libp2p listen multiaddrs (TCP)"},
    )
    peers: list[str] = field(
        default_factory=list,
        metadata={"help": "peer multiaddrs (with /p2p/<id>) to stay connected to, reconnecting with backoff"},
    )
    fetch_timeout: float = field(
        default=30.0,
        metadata={"help": "seconds before a block no connected peer provides fails with an error"},
    )
    want_timeout: float = field(
        default=5.0,
        metadata={"help": "seconds to wait for one peer's answer to a want before asking another"},
    )
    want_window: int = field(
        default=32,
        metadata={"help": "blocks fetched in parallel ahead of a reader"},
    )
    max_block_size: int = field(
        default=2 * 1024 * 1024,
        metadata={"help": "largest block sent or accepted over bitswap, in bytes"},
    )
    max_message_size: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "largest bitswap message sent or accepted, in bytes"},
    )
    target_message_size: int = field(
        default=256 * 1024,
        metadata={"help": "bitswap server packs blocks into messages up to about this size"},
    )
    server_workers: int = field(
        default=4,
        metadata={"help": "bitswap server tasks answering peers concurrently (round-robin between peers)"},
    )
    server_streams_per_peer: int = field(
        default=16,
        metadata={"help": "bitswap server messages in flight to one peer at a time, each on its own stream"},
    )
    max_wants_per_peer: int = field(
        default=8192,
        metadata={"help": "wantlist entries kept per remote peer; more is a protocol violation"},
    )
    swarm_key: str = field(
        default="",
        metadata={
            "help": "private network key file (Kubo's swarm.key: /key/swarm/psk/1.0.0/, /base16/, 64 hex"
            " digits); empty: DATA/swarm.key when it exists. With a key, only peers holding it can connect"
        },
    )
    mdns: bool = field(
        default=False,
        metadata={"help": "discover and connect to peers on the local network with mDNS (_p2p._udp.local)"},
    )
    peering_max_backoff: float = field(
        default=60.0,
        metadata={"help": "upper bound in seconds of the reconnect backoff for configured peers"},
    )

"""Settings of the trustless gateway mounted on the registry port."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GatewaySettings:
    enabled: bool = field(
        default=True, metadata={"help": "serve the IPFS gateway under /ipfs/ on the registry port"}
    )
    deserialized: bool = field(
        default=True,
        metadata={
            "help": "also answer browsers (file bytes, directory listings); false: trustless only"
            " (raw blocks and CARs; other requests get 400 without Accept, 406 otherwise)"
        },
    )

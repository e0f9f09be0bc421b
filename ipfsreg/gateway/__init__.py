"""The IPFS trustless gateway (raw blocks, CAR with dag-scope and entity-bytes, plain files) under /ipfs/.

The handler and routes (which pull in Quart) load on first use, so reading the gateway's settings,
as every CLI command's config loading does, stays cheap.
"""

from typing import Any

from ipfsreg.gateway.errors import GatewayError
from ipfsreg.gateway.settings import GatewaySettings

__all__ = ["GatewayError", "GatewayResponse", "GatewaySettings", "handle_request", "register_gateway"]

_LAZY = {
    "GatewayResponse": "ipfsreg.gateway.handler",
    "handle_request": "ipfsreg.gateway.handler",
    "register_gateway": "ipfsreg.gateway.routes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ipfsreg.gateway' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

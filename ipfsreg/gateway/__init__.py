"""The IPFS trustless gateway (raw blocks, CAR with dag-scope and entity-bytes, plain files) under /ipfs/."""

from ipfsreg.gateway.errors import GatewayError
from ipfsreg.gateway.handler import GatewayResponse, handle_request
from ipfsreg.gateway.routes import register_gateway
from ipfsreg.gateway.settings import GatewaySettings

__all__ = ["GatewayError", "GatewayResponse", "GatewaySettings", "handle_request", "register_gateway"]

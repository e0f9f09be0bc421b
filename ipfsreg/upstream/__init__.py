"""Client of a remote registry (the upstream of a pull-through cache): distribution API v2 with its
Basic and Bearer-token auth challenge flow, digest-verified manifests and streamed blobs."""

from ipfsreg.upstream.client import UpstreamBlob, UpstreamClient, UpstreamManifest
from ipfsreg.upstream.errors import (
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)

__all__ = [
    "UpstreamBlob",
    "UpstreamClient",
    "UpstreamDigestMismatch",
    "UpstreamError",
    "UpstreamManifest",
    "UpstreamNotFound",
    "UpstreamUnauthorized",
    "UpstreamUnavailable",
]

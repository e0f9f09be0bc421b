"""OCI content digests for the registry: :mod:`ipfsreg.oci.digests`, with errors as RegistryError
(``DIGEST_INVALID``) for the HTTP handlers."""

from __future__ import annotations

from ipfsreg.oci import digests as _oci
from ipfsreg.oci.digests import HEX_LENGTHS, Digest, Hasher, digest_of, is_digest_like
from ipfsreg.oci.errors import DigestInvalid
from ipfsreg.registry.errors import registry_error


def new_hasher(algorithm: str) -> Hasher:
    try:
        return _oci.new_hasher(algorithm)
    except DigestInvalid as exc:
        raise registry_error(exc) from None


def parse_digest(text: str) -> Digest:
    """Parse a sha256 or sha512 digest; anything else raises DIGEST_INVALID."""
    try:
        return _oci.parse_digest(text)
    except DigestInvalid as exc:
        raise registry_error(exc) from None


__all__ = ["HEX_LENGTHS", "Digest", "Hasher", "digest_of", "is_digest_like", "new_hasher", "parse_digest"]

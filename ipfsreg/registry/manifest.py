"""Manifests for the registry: the OCI parser (:mod:`ipfsreg.oci.manifest`) with its errors as
RegistryError (``MANIFEST_INVALID``)."""

from __future__ import annotations

from ipfsreg.oci import manifest as _oci
from ipfsreg.oci.errors import OCIError
from ipfsreg.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ParsedManifest,
    pick_platform,
    referrer_descriptor,
)
from ipfsreg.registry.errors import registry_error


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a manifest body; raise MANIFEST_INVALID (a RegistryError) describing the first problem."""
    try:
        return _oci.parse_manifest(body, content_type)
    except OCIError as exc:
        raise registry_error(exc) from None


__all__ = [
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "DOCKER_SCHEMA1",
    "IMAGE_TYPES",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "ParsedManifest",
    "parse_manifest",
    "pick_platform",
    "referrer_descriptor",
]

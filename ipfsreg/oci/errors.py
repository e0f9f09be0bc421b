"""The one error family of the OCI layer: manifests and digests (parsing, checking) and image
layouts on IPFS (building, reading).

Every error carries the OCI distribution error ``code`` that describes it (``MANIFEST_INVALID``,
``DIGEST_INVALID``, ...) and a JSON-able ``detail``, so the registry turns it into its own error
without knowing each type (see ``ipfsreg.registry.errors.registry_error``).
"""

from __future__ import annotations

from typing import Any


class OCIError(Exception):
    """An OCI format error; ``code`` is the distribution error code a registry answers with."""

    code = "MANIFEST_INVALID"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail: Any = detail if detail is not None else {"reason": message}


class ManifestInvalid(OCIError):
    """A manifest or index that cannot be parsed or does not follow the OCI / Docker schema."""

    code = "MANIFEST_INVALID"


class DigestInvalid(OCIError):
    """A digest that is malformed or uses an algorithm this implementation does not support."""

    code = "DIGEST_INVALID"


class LayoutError(OCIError):
    """A layout cannot be built (a referenced blob is missing, a manifest is invalid) or is malformed."""


class ReferenceNotFound(LayoutError):
    """No manifest or blob in the layout answers to this tag or digest."""

    def __init__(self, reference: str, detail: str = "") -> None:
        super().__init__(f"{reference!r} is not in the image layout" + (f": {detail}" if detail else ""))
        self.reference = reference

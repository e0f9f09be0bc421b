"""The one error family of the OCI image layout layer (building and reading layouts on IPFS)."""

from __future__ import annotations


class LayoutError(Exception):
    """A layout cannot be built (a referenced blob is missing, a manifest is invalid) or is malformed."""


class ReferenceNotFound(LayoutError):
    """No manifest or blob in the layout answers to this tag or digest."""

    def __init__(self, reference: str, detail: str = "") -> None:
        super().__init__(f"{reference!r} is not in the image layout" + (f": {detail}" if detail else ""))
        self.reference = reference

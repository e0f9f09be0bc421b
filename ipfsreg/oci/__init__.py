"""Container images as IPFS directories: OCI Image Layouts over blob DAGs, built and read."""

from ipfsreg.oci.blobs import layout_blob
from ipfsreg.oci.errors import LayoutError, ReferenceNotFound
from ipfsreg.oci.layout import LayoutBlob, LayoutResult, build_image_layout, build_layout
from ipfsreg.oci.reader import (
    ImageLayout,
    LayoutDescriptor,
    LayoutManifest,
    ResolvedReference,
    blob_cid,
    find_manifest,
    read_image_layout,
    read_manifest,
    resolve_reference,
)

__all__ = [
    "ImageLayout",
    "LayoutBlob",
    "LayoutDescriptor",
    "LayoutError",
    "LayoutManifest",
    "LayoutResult",
    "ReferenceNotFound",
    "ResolvedReference",
    "blob_cid",
    "build_image_layout",
    "build_layout",
    "find_manifest",
    "layout_blob",
    "read_image_layout",
    "read_manifest",
    "resolve_reference",
]

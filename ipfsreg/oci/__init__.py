"""Container images as IPFS directories: OCI Image Layouts over blob DAGs, built and read."""

from ipfsreg.oci.errors import LayoutError, ReferenceNotFound
from ipfsreg.oci.layout import LayoutBlob, LayoutResult, build_image_layout, build_layout
from ipfsreg.oci.reader import ImageLayout, LayoutDescriptor, ResolvedReference, read_image_layout

__all__ = [
    "ImageLayout",
    "LayoutBlob",
    "LayoutDescriptor",
    "LayoutError",
    "LayoutResult",
    "ReferenceNotFound",
    "ResolvedReference",
    "build_image_layout",
    "build_layout",
    "read_image_layout",
]

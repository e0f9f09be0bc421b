"""Pure parsing and validation of OCI / Docker manifests and indexes (no I/O).

``parse_manifest`` turns a manifest body plus its Content-Type into the facts a registry or an
image layout needs: the media type, the blobs and child manifests it references, its subject and
artifact type. Whatever the body holds, the only error out of it is :class:`ManifestInvalid`
(hostile bodies included: nesting deeper than any manifest needs, numbers past int64, bodies that
are not UTF-8 JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from ipfsreg.oci.digests import Digest, parse_digest
from ipfsreg.oci.errors import DigestInvalid, ManifestInvalid

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1: Final = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
IMAGE_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES: Final = IMAGE_TYPES | INDEX_TYPES

# A manifest nests a handful of levels (index -> manifests[] -> descriptor -> platform -> features[]);
# anything deeper is refused before it can exhaust the stack of code that walks or re-encodes it.
MAX_DEPTH: Final = 32
# Sizes are int64 in the spec (and in every Go implementation).
MAX_SIZE: Final = 2**63 - 1


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    platform: dict[str, Any] | None = None


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    blobs: tuple[Descriptor, ...]
    """Config and layers (image manifests)."""
    manifests: tuple[Descriptor, ...]
    """Child manifests (indexes)."""
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _invalid(reason: str) -> ManifestInvalid:
    return ManifestInvalid(reason, {"reason": reason})


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    digest_text = value.get("digest")
    if not isinstance(digest_text, str):
        raise _invalid(f"{where}.digest is missing")
    try:
        digest = parse_digest(digest_text)
    except DigestInvalid:
        raise _invalid(f"{where}.digest {digest_text[:150]!r} is not a valid digest") from None
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise _invalid(f"{where}.size must be an integer from 0 to 2^63-1")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid(f"{where}.artifactType must be a string")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}.platform must be an object")
    return Descriptor(media_type, digest, size, artifact_type, platform)


def _annotations(doc: dict[str, Any]) -> dict[str, str]:
    value = doc.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid("annotations must map strings to strings")
    return dict(value)


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    header = (content_type or "").split(";")[0].strip().lower() or None
    if header in DOCKER_SCHEMA1 or declared in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise _invalid("Docker schema1 manifests are not supported")
    if declared and header and declared != header:
        raise _invalid(f"mediaType {declared[:200]!r} does not match Content-Type {header[:200]!r}")
    media_type = declared or header
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type {media_type[:200]!r}")
    return media_type


def _check_depth(doc: Any) -> None:
    """Refuse values nested deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _invalid(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values() if isinstance(child, dict | list))
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value if isinstance(child, dict | list))


def load_json(body: bytes) -> Any:
    """``json.loads`` that fails only with :class:`ManifestInvalid` (bad UTF-8 or JSON, nesting
    past the parser's or :data:`MAX_DEPTH`, integers past Python's digit limit)."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise _invalid(f"nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError; the int-string limit
        raise _invalid(f"not valid JSON: {str(exc)[:200]}") from None
    _check_depth(doc)
    return doc


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a manifest body; raise :class:`ManifestInvalid` describing the first problem."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise _invalid("manifest is not a JSON object")
    media_type = _media_type(doc, content_type)
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc)
    if media_type in IMAGE_TYPES:
        if "manifests" in doc:
            raise _invalid("an image manifest has no 'manifests' field")
        config = _descriptor(doc.get("config"), "config")
        layers_raw = doc.get("layers", [] if media_type == OCI_MANIFEST else None)
        if not isinstance(layers_raw, list):
            raise _invalid("layers must be an array")
        layers = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers_raw)]
        if artifact_type is None and media_type == OCI_MANIFEST:
            artifact_type = config.media_type
        return ParsedManifest(media_type, (config, *layers), (), subject, artifact_type, annotations)
    if "config" in doc or "layers" in doc:
        raise _invalid("an index has no 'config' or 'layers' field")
    manifests_raw = doc.get("manifests")
    if not isinstance(manifests_raw, list):
        raise _invalid("manifests must be an array")
    children = tuple(_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests_raw))
    return ParsedManifest(media_type, (), children, subject, artifact_type, annotations)


def referrer_descriptor(parsed: ParsedManifest, digest: Digest, size: int) -> dict[str, Any]:
    """The descriptor of a manifest as listed by the referrers API."""
    entry: dict[str, Any] = {"mediaType": parsed.media_type, "digest": str(digest), "size": size}
    if parsed.artifact_type:
        entry["artifactType"] = parsed.artifact_type
    if parsed.annotations:
        entry["annotations"] = parsed.annotations
    return entry


def pick_platform(
    children: tuple[Descriptor, ...], os: str = "linux", arch: str = "amd64"
) -> Descriptor | None:
    """The child manifest for a platform, for clients that do not accept an index."""
    for child in children:
        platform = child.platform or {}
        if platform.get("os") == os and platform.get("architecture") == arch:
            return child
    return None

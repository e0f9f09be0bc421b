"""The OCI manifest parser (ipfsreg/oci/manifest.py) against hostile bodies: whatever the bytes, the
only error out of it is ManifestInvalid (RegistryError MANIFEST_INVALID through the registry), and
the oci package never imports the registry."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipfsreg.oci
from ipfsreg.oci.errors import ManifestInvalid
from ipfsreg.oci.manifest import MAX_DEPTH, OCI_INDEX, OCI_MANIFEST, ParsedManifest, parse_manifest
from ipfsreg.registry import manifest as registry_manifest
from ipfsreg.registry.errors import RegistryError

D1 = "sha256:" + hashlib.sha256(b"1").hexdigest()
D2 = "sha256:" + hashlib.sha256(b"2").hexdigest()


def _image(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 7},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 9}],
    }
    doc.update(overrides)
    return doc


HOSTILE = {
    "100k nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "100k nested arrays, unclosed": b"[" * 100_000,
    "100k nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep nesting inside layers": (
        b'{"schemaVersion":2,"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","layers":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    ),
    "nesting past MAX_DEPTH": json.dumps(
        _image(platform=json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)))
    ).encode(),
    "5,000-digit size": json.dumps(_image()).encode().replace(b'"size": 7', b'"size": ' + b"9" * 5000),
    "size past int64": json.dumps(_image(config={**_image()["config"], "size": 2**63})).encode(),
    "float size": json.dumps(_image(config={**_image()["config"], "size": 7.5})).encode(),
    "infinite size": json.dumps(_image()).encode().replace(b'"size": 7', b'"size": 1e999'),
    "not UTF-8": b'{"schemaVersion": 2, "mediaType": "\xff\xfe"}',
    "lone surrogate": b'{"schemaVersion": 2, "mediaType": "\\ud800"}',
    "NaN schemaVersion": b'{"schemaVersion": NaN}',
    "empty": b"",
    "a string": b'"manifest"',
    "huge digest": json.dumps(
        _image(config={"mediaType": "x", "digest": "sha256:" + "a" * 100_000, "size": 1})
    ).encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_manifest_bodies_raise_manifest_invalid(name: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(HOSTILE[name], OCI_MANIFEST)
    assert info.value.code == "MANIFEST_INVALID"
    assert len(str(info.value)) < 500  # a reason, not an echo of the body


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_manifest_bodies_are_manifest_invalid_registry_errors(name: str) -> None:
    with pytest.raises(RegistryError) as info:
        registry_manifest.parse_manifest(HOSTILE[name], OCI_MANIFEST)
    assert info.value.code == "MANIFEST_INVALID"
    assert info.value.status == 400


def test_nesting_up_to_max_depth_is_accepted() -> None:
    platform: Any = {"os": "linux", "architecture": "amd64"}
    for _ in range(MAX_DEPTH - 4):  # index -> manifests -> descriptor -> platform -> ...
        platform = {"nested": platform}
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": D1, "size": 1, "platform": platform}],
    }
    assert parse_manifest(json.dumps(index).encode(), OCI_INDEX).manifests[0].digest.hex.startswith("6b86")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
manifest_keys = st.sampled_from(
    ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "annotations", "artifactType"]
)
descriptor_keys = st.sampled_from(["mediaType", "digest", "size", "artifactType", "platform", "urls"])


@st.composite
def mutated_manifests(draw: st.DrawFn) -> bytes:
    """A valid image manifest or index with some fields replaced by arbitrary JSON values."""
    doc: dict[str, Any] = draw(
        st.sampled_from(
            [
                _image(),
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [{"mediaType": OCI_MANIFEST, "digest": D1, "size": 3}],
                },
            ]
        )
    )
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(0, 4))):
        doc[draw(manifest_keys)] = draw(json_values)
    for field in ("config", "subject"):
        if isinstance(doc.get(field), dict) and draw(st.booleans()):
            doc[field][draw(descriptor_keys)] = draw(json_values)
    for field in ("layers", "manifests"):
        entries = doc.get(field)
        if isinstance(entries, list) and entries and isinstance(entries[0], dict) and draw(st.booleans()):
            entries[0][draw(descriptor_keys)] = draw(json_values)
    text = json.dumps(doc)
    if draw(st.booleans()):  # cut or splice the text: broken JSON, too
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=10)) + text[at + draw(st.integers(0, 5)) :]
    return text.encode("utf-8", "surrogatepass")


content_types = st.none() | st.sampled_from(
    [OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v1+json", "text/plain", ""]
)


def _only_manifest_invalid(body: bytes, content_type: str | None) -> None:
    try:
        parsed = parse_manifest(body, content_type)
    except ManifestInvalid as exc:
        assert exc.code == "MANIFEST_INVALID"
    else:
        assert isinstance(parsed, ParsedManifest)
    try:
        registry_manifest.parse_manifest(body, content_type)
    except RegistryError as exc:
        assert exc.code == "MANIFEST_INVALID" and exc.status == 400


@settings(max_examples=400, deadline=None)
@given(body=mutated_manifests(), content_type=content_types)
def test_mutated_manifests_parse_or_raise_only_manifest_invalid(
    body: bytes, content_type: str | None
) -> None:
    _only_manifest_invalid(body, content_type)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=content_types,
)
def test_arbitrary_bytes_and_json_parse_or_raise_only_manifest_invalid(
    body: bytes, content_type: str | None
) -> None:
    _only_manifest_invalid(body, content_type)


def test_the_oci_package_never_imports_the_registry() -> None:
    # Dependencies point one way: registry -> oci.
    package = Path(ipfsreg.oci.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("ipfsreg.registry"), f"{path.name} imports {name}"

"""Unit tests of the registry's pure parts: names, digests, ranges, routes, errors, manifest parsing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from ipfsreg.cid import CID
from ipfsreg.registry.digests import Digest, digest_of, is_digest_like, parse_digest
from ipfsreg.registry.errors import ERROR_CODES, RegistryError
from ipfsreg.registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
    pick_platform,
    referrer_descriptor,
)
from ipfsreg.registry.names import (
    check_name,
    is_valid_name,
    is_valid_tag,
    pull_reference,
    reference_host,
)
from ipfsreg.registry.ranges import RangeNotSatisfiable, parse_content_range, parse_range, upload_range
from ipfsreg.registry.routes import Route, match_route

D1 = "sha256:" + hashlib.sha256(b"1").hexdigest()
D2 = "sha256:" + hashlib.sha256(b"2").hexdigest()


@pytest.mark.parametrize(
    "name",
    ["a", "library/ubuntu", "a0/b_c/d__e/f-g/h--i", "foo.bar/baz", "x" * 255, "a/" * 100 + "z"],
)
def test_valid_repository_names(name: str) -> None:
    assert is_valid_name(name)
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "a___b", "a_-b", ".a", "a.", "a/-b", "x" * 256, "a b", "a\0b", "ä"],
)
def test_invalid_repository_names_raise_name_invalid(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(RegistryError) as info:
        check_name(name)
    assert info.value.code == "NAME_INVALID" and info.value.status == 400


def test_tag_grammar() -> None:
    assert (
        is_valid_tag("latest")
        and is_valid_tag("_x")
        and is_valid_tag("v1.2-rc_3")
        and is_valid_tag("A" * 128)
    )
    for bad in ("", ".x", "-x", "a" * 129, "a/b", "a:b"):
        assert not is_valid_tag(bad)


def test_parse_digest_accepts_sha256_and_sha512() -> None:
    assert parse_digest(D1) == Digest("sha256", D1[7:])
    d512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert str(parse_digest(d512)) == d512
    assert digest_of(b"1") == parse_digest(D1)
    assert digest_of(b"x", "sha512") == parse_digest(d512)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256:" + "g" * 64,
        ":abc",
    ],
)
def test_parse_digest_rejects_with_digest_invalid(text: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_digest(text)
    assert info.value.code == "DIGEST_INVALID"


def test_is_digest_like_separates_digests_from_tags() -> None:
    assert is_digest_like(D1) and is_digest_like("md5:abc")
    assert not is_digest_like("latest") and not is_digest_like("v1.0")


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 10)),
        ("bytes=90-200", 100, (90, 10)),
        ("bytes=-10", 100, (90, 10)),
        ("bytes=-200", 100, (0, 100)),
        ("bytes=5-4", 100, None),
        ("items=0-1", 100, None),
        ("bytes=0-1,3-4", 100, None),
        ("bytes=-", 100, None),
    ],
)
def test_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_parse_range_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("0-99", (0, 99)), ("bytes=10-19", (10, 19)), ("bytes 10-19/100", (10, 19)), ("5-5/*", (5, 5))],
)
def test_parse_content_range(header: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", ["", "abc", "10-5", "-5", "0-", "1-2-3"])
def test_parse_content_range_invalid_is_416(header: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_content_range(header)
    assert info.value.status == 416 and info.value.code == "BLOB_UPLOAD_INVALID"


def test_upload_range_header() -> None:
    assert upload_range(0) == "0-0"
    assert upload_range(1) == "0-0"
    assert upload_range(100) == "0-99"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/", Route("base")),
        ("/v2", Route("base")),
        ("/v2/_catalog", Route("catalog")),
        ("/v2/a/b/tags/list", Route("tags", "a/b")),
        ("/v2/a/manifests/latest", Route("manifest", "a", "latest")),
        (f"/v2/a/b/manifests/{D1}", Route("manifest", "a/b", D1)),
        ("/v2/a/blobs/uploads/", Route("uploads", "a")),
        ("/v2/a/blobs/uploads", Route("uploads", "a")),
        ("/v2/a/blobs/uploads/1234", Route("upload", "a", "1234")),
        (f"/v2/a/blobs/{D1}", Route("blob", "a", D1)),
        (f"/v2/blobs/blobs/{D1}", Route("blob", "blobs", D1)),
        (f"/v2/x/manifests/y/referrers/{D1}", Route("referrers", "x/manifests/y", D1)),
        ("/v2/a/other", None),
        ("/v3/", None),
    ],
)
def test_match_route(path: str, route: Route | None) -> None:
    assert match_route(path) == route


def test_registry_error_body_and_table() -> None:
    err = RegistryError("BLOB_UNKNOWN", {"digest": D1})
    assert err.status == 404
    assert json.loads(err.body()) == {
        "errors": [
            {"code": "BLOB_UNKNOWN", "message": ERROR_CODES["BLOB_UNKNOWN"].message, "detail": {"digest": D1}}
        ]
    }
    assert RegistryError("BLOB_UPLOAD_INVALID", status=416).status == 416
    assert "detail" not in RegistryError("DENIED").to_json()["errors"][0]
    with pytest.raises(ValueError):
        RegistryError("NOT_A_CODE")
    for code in (
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    ):
        assert code in ERROR_CODES


def _image(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 1}],
        **extra,
    }


def test_parse_image_manifest_lists_config_and_layers() -> None:
    parsed = parse_manifest(json.dumps(_image()).encode(), OCI_MANIFEST)
    assert parsed.media_type == OCI_MANIFEST and not parsed.is_index
    assert [str(d.digest) for d in parsed.blobs] == [D1, D2]
    assert parsed.manifests == () and parsed.subject is None
    assert parsed.artifact_type == "application/vnd.oci.image.config.v1+json"


def test_parse_manifest_media_type_from_body_or_header() -> None:
    body = _image()
    del body["mediaType"]
    assert parse_manifest(json.dumps(body).encode(), None).media_type == OCI_MANIFEST
    assert (
        parse_manifest(json.dumps(body).encode(), OCI_MANIFEST + "; charset=utf-8").media_type == OCI_MANIFEST
    )
    index = {"schemaVersion": 2, "manifests": []}
    assert parse_manifest(json.dumps(index).encode(), None).media_type == OCI_INDEX
    docker = {**body, "mediaType": DOCKER_MANIFEST}
    assert parse_manifest(json.dumps(docker).encode(), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST


def test_parse_artifact_with_subject() -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": D2, "size": 3}
    parsed = parse_manifest(
        json.dumps(_image(artifactType="application/x", subject=subject, annotations={"k": "v"})).encode(),
        OCI_MANIFEST,
    )
    assert parsed.subject is not None and str(parsed.subject.digest) == D2
    assert parsed.artifact_type == "application/x"
    assert referrer_descriptor(parsed, parse_digest(D1), 10) == {
        "mediaType": OCI_MANIFEST,
        "digest": D1,
        "size": 10,
        "artifactType": "application/x",
        "annotations": {"k": "v"},
    }


def test_parse_index_lists_child_manifests() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": D1,
                "size": 5,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": D2,
                "size": 5,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    parsed = parse_manifest(json.dumps(index).encode(), DOCKER_LIST)
    assert parsed.is_index and parsed.blobs == ()
    chosen = pick_platform(parsed.manifests)
    assert chosen is not None and str(chosen.digest) == D2
    assert pick_platform(parsed.manifests, arch="s390x") is None


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        ("not json", OCI_MANIFEST),
        ([], OCI_MANIFEST),
        ({**_image(), "schemaVersion": 3}, OCI_MANIFEST),
        ({**_image(), "schemaVersion": 1}, None),
        (_image(), OCI_INDEX),
        (_image(), "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        ({**_image(), "mediaType": "text/plain"}, None),
        ({**_image(), "mediaType": 5}, None),
        ({**_image(), "config": None}, OCI_MANIFEST),
        ({**_image(), "config": {"mediaType": "x", "digest": "bad", "size": 1}}, OCI_MANIFEST),
        ({**_image(), "config": {"mediaType": "x", "digest": D1, "size": -1}}, OCI_MANIFEST),
        ({**_image(), "config": {"mediaType": "x", "digest": D1, "size": True}}, OCI_MANIFEST),
        ({**_image(), "config": {"digest": D1, "size": 1}}, OCI_MANIFEST),
        ({**_image(), "layers": {}}, OCI_MANIFEST),
        ({**_image(), "manifests": []}, OCI_MANIFEST),
        ({**_image(), "annotations": {"a": 1}}, OCI_MANIFEST),
        ({**_image(), "artifactType": 1}, OCI_MANIFEST),
        ({**_image(), "subject": "x"}, OCI_MANIFEST),
        ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": "x"}, OCI_INDEX),
        ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []}, OCI_INDEX),
        ({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": _image()["config"]}, DOCKER_MANIFEST),
    ],
)
def test_parse_manifest_rejects_invalid_with_manifest_invalid(doc: Any, content_type: str | None) -> None:
    body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    with pytest.raises(RegistryError) as info:
        parse_manifest(body, content_type)
    assert info.value.code == "MANIFEST_INVALID"


def test_pull_reference_is_the_cidv1_base32_repository_with_tag_and_host() -> None:
    v0 = CID.parse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")
    v1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    assert pull_reference(v0, "v1") == f"ipfs/{v1}:v1"
    assert pull_reference(v0, "latest", "localhost:5000") == f"localhost:5000/ipfs/{v1}:latest"
    assert pull_reference(v0.to_v1(), "v1") == pull_reference(v0, "v1")
    assert is_valid_name(pull_reference(v0, "x").split(":")[0])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("registry.example:5000", "registry.example:5000"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://[::1]:5443", "[::1]:5443"),
        ("http://0.0.0.0:5000", "localhost:5000"),
        ("http://[::]:5000", "localhost:5000"),
        ("example.org", "example.org"),
        ("", None),
        (None, None),
        ("bad host!", None),
        ("a/b", None),
        ("-leading.dash", None),
    ],
)
def test_reference_host_takes_what_a_client_can_use(host: str | None, expected: str | None) -> None:
    assert reference_host(host) == expected

"""The fleet benchmark's pure parts (bench/fleet.py): reading the reference registry's access log, the
percentiles, and a client's copy checked against the image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.fleet import FleetError, parse_access_log, percentile, read_image, verify_copy, write_image

BLOB = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32

# Lines as distribution 2.8 (Debian docker-registry) writes them: gorilla's combined log format.
ACCESS_LOG = f"""\
198.18.0.11 - - [01/Dec/2026:23:35:03 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skopeo/1.9.3"
198.18.0.11 - - [01/Dec/2026:23:35:03 +0000] "HEAD /v2/bench/fleet/manifests/latest HTTP/1.1" 200 1024 "" "x"
198.18.0.11 - - [01/Dec/2026:23:35:03 +0000] "GET /v2/bench/fleet/manifests/latest HTTP/1.1" 200 1024 "" "x"
198.18.0.11 - - [01/Dec/2026:23:35:04 +0000] "GET /v2/bench/fleet/blobs/{BLOB} HTTP/1.1" 200 5000000 "" "x"
198.18.0.12 - - [01/Dec/2026:23:35:04 +0000] "GET /v2/bench/fleet/blobs/{BLOB} HTTP/1.1" 200 2500000 "" "x"
198.18.0.12 - - [01/Dec/2026:23:35:04 +0000] "GET /v2/bench/fleet/blobs/{OTHER} HTTP/1.1" 404 157 "" "x"
time="2026-12-01T23:35:03Z" level=error msg="response completed with error" err.code="blob unknown"
"""


def test_access_log_counts_body_bytes_per_client_and_per_blob() -> None:
    served = parse_access_log(ACCESS_LOG)
    assert served.total_bytes == 2 + 1024 + 5_000_000 + 2_500_000 + 157
    assert served.by_client == {"198.18.0.11": 2 + 1024 + 5_000_000, "198.18.0.12": 2_500_000 + 157}
    assert served.blob_bytes == {BLOB: 7_500_000}
    assert served.blob_gets == {BLOB: 2}
    assert served.by_agent == {"skopeo": 2, "x": 1024 + 5_000_000 + 2_500_000 + 157}


def test_access_log_head_requests_and_other_lines_count_nothing() -> None:
    served = parse_access_log(
        '198.18.0.11 - - [d] "HEAD /v2/bench/fleet/blobs/' + BLOB + ' HTTP/1.1" 200 5000000 "" "x"\n'
        'time="..." level=info msg="listening on 198.18.0.10:5000"\n'
    )
    assert served.total_bytes == 0 and served.blob_gets == {}


def test_percentile_is_nearest_rank() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.0
    assert percentile(values, 99) == 4.0
    assert percentile([7.0], 99) == 7.0


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    write_image(root, 400_000)
    return root


def test_fleet_image_has_four_gzip_layers_that_a_copy_of_it_verifies_against(
    image_root: Path, tmp_path: Path
) -> None:
    image = read_image(image_root)
    assert len(image.layers) == 4
    manifest = json.loads((image_root / "blobs" / "sha256" / image.manifest.digest[7:]).read_bytes())
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    assert image.size > 400_000
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    verify_copy(copy, image)


def test_copy_with_one_flipped_byte_in_a_layer_fails_verification(image_root: Path, tmp_path: Path) -> None:
    image = read_image(image_root)
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    layer = copy / "blobs" / "sha256" / image.layers[2].digest[7:]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 1
    layer.write_bytes(bytes(data))
    with pytest.raises(FleetError, match="do not match"):
        verify_copy(copy, image)

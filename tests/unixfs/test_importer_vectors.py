"""Kubo CID vectors for the file importer (kubo test/cli/cid_profiles_test.go and add_test.go).

Data comes from Kubo's deterministic ChaCha20 generator (see unixfs_support). The CIDs are IPIP-499's
fixtures for its two profiles, imported with ipfsreg's profiles (ipfsreg.unixfs.profiles): unixfs-v0-2015,
Kubo's default (CIDv0, dag-pb TFile leaves, 256 KiB chunks, 174 links), and unixfs-v1-2025 (CIDv1, raw
leaves, 1 MiB chunks, 1024 links).
"""

from __future__ import annotations

import pytest
from unixfs_support import deterministic_chunks

from ipfsreg.cid import CID, DAG_PB, RAW
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import DataType
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.importer import FileImporter, ImportOptions, import_bytes
from ipfsreg.unixfs.profiles import UNIXFS_V0_2015, UNIXFS_V1_2025

V0 = UNIXFS_V0_2015
V1_2025 = UNIXFS_V1_2025


def import_stream(size: int, seed: str, options: ImportOptions) -> tuple[str, int]:
    importer = FileImporter(options)
    nblocks = 0
    for piece in deterministic_chunks(size, seed, 1_000_003):
        nblocks += len(importer.write(piece))
    blocks, result = importer.finish()
    assert result.size == size
    return str(result.cid), nblocks + len(blocks)


def test_hello_world_v0_is_dag_pb_wrapped_leaf() -> None:
    blocks, result = import_bytes(b"hello world")
    assert str(result.cid) == "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
    assert len(blocks) == 1 and result.size == 11 and result.dag_size == len(blocks[0].data)
    fs = decode_unixfs(dagpb.decode(blocks[0].data).data or b"")
    assert fs.type == DataType.FILE and fs.data == b"hello world" and fs.filesize == 11


def test_hello_world_cid_v1_is_raw_leaf() -> None:
    blocks, result = import_bytes(b"hello world", ImportOptions(cid_version=1))
    assert str(result.cid) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert result.cid.codec == RAW and blocks[0].data == b"hello world" and result.dag_size == 11


def test_hello_world_cid_v1_without_raw_leaves_is_dag_pb() -> None:
    _, result = import_bytes(b"hello world", ImportOptions(cid_version=1, raw_leaves=False))
    assert result.cid.codec == DAG_PB and str(result.cid).startswith("bafy")
    assert result.cid.multihash == CID.parse("Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD").multihash


def test_empty_file_v0_and_v1() -> None:
    _, v0 = import_bytes(b"")
    assert str(v0.cid) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    _, v1 = import_bytes(b"", ImportOptions(cid_version=1))
    assert str(v1.cid) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert v0.size == v1.size == 0


def test_file_at_chunk_size_v0_is_single_tfile_leaf() -> None:
    cid, nblocks = import_stream(262144, "chunk-v0-seed", V0)
    assert cid == "QmWmRj3dFDZdb6ABvbmKhEL6TmPbAfBZ1t5BxsEyJrcZhE"
    assert nblocks == 1


def test_file_one_byte_over_chunk_size_v0_has_two_leaves() -> None:
    cid, nblocks = import_stream(262145, "chunk-v0-seed", V0)
    assert cid == "QmYyLxtzZyW22zpoVAtKANLRHpDjZtNeDjQdJrcQNWoRkJ"
    assert nblocks == 3


def test_file_at_max_links_v0_is_one_layer() -> None:
    cid, nblocks = import_stream(174 * 262144, "v0-seed", V0)
    assert cid == "QmUbBALi174SnogsUzLpYbD4xPiBSFANF4iztWCsHbMKh2"
    assert nblocks == 175


def test_file_one_byte_over_max_links_v0_is_rebalanced() -> None:
    cid, nblocks = import_stream(174 * 262144 + 1, "v0-seed", V0)
    assert cid == "QmV81WL765sC8DXsRhE5fJv2rwhS4icHRaf3J9Zk5FdRnW"
    assert nblocks == 175 + 1 + 1 + 1  # leaves, the full node, the one-leaf node, the root


def test_hello_world_v1_2025_is_a_raw_leaf() -> None:
    _, result = import_bytes(b"hello world", V1_2025)
    assert str(result.cid) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def test_default_import_options_are_the_unixfs_v0_2015_profile() -> None:
    assert ImportOptions() == V0


def test_file_at_chunk_size_v1_2025_is_raw_leaf() -> None:
    cid, _ = import_stream(1048576, "chunk-v1-seed", V1_2025)
    assert cid == "bafkreiacndfy443ter6qr2tmbbdhadvxxheowwf75s6zehscklu6ezxmta"


def test_file_one_byte_over_chunk_size_v1_2025() -> None:
    cid, _ = import_stream(1048577, "chunk-v1-seed", V1_2025)
    assert cid == "bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64"


@pytest.mark.slow
def test_file_at_max_links_v1_2025_one_gib() -> None:
    cid, _ = import_stream(1024 * 1048576, "v1-2025-seed", V1_2025)
    assert cid == "bafybeihmf37wcuvtx4hpu7he5zl5qaf2ineo2lqlfrapokkm5zzw7zyhvm"


@pytest.mark.slow
def test_file_one_byte_over_max_links_v1_2025_one_gib() -> None:
    cid, _ = import_stream(1024 * 1048576 + 1, "v1-2025-seed", V1_2025)
    assert cid == "bafybeibdsi225ugbkmpbdohnxioyab6jsqrmkts3twhpvfnzp77xtzpyhe"

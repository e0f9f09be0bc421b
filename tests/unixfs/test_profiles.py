"""IPIP-499 import profiles: files and directories written to disk and imported with a profile give the
CIDs of the IPIP's fixtures (kubo test/cli/cid_profiles_test.go makes the same inputs the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest
from unixfs_support import deterministic_bytes, deterministic_filenames

from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import DataType
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.directory import import_tree
from ipfsreg.unixfs.importer import ImportOptions
from ipfsreg.unixfs.profiles import (
    PROFILES,
    UNIXFS_V0_2015,
    UNIXFS_V1_2025,
    import_profile,
    profile_options,
)


def tree_root(path: Path, options: ImportOptions) -> tuple[str, DataType]:
    tree = import_tree(path, options)
    blocks = list(tree)
    assert tree.result is not None and blocks[-1].cid == tree.result.cid
    root = blocks[-1]
    fs_type = (
        DataType.RAW if root.cid.codec == 0x55 else decode_unixfs(dagpb.decode(root.data).data or b"").type
    )
    return str(tree.result.cid), fs_type


def x_files(root: Path, count: int, name_len: int, last_name_len: int, seed: str) -> Path:
    """Kubo's createDeterministicFiles: ``count`` files holding "x", named from the seed's stream."""
    root.mkdir()
    for name in deterministic_filenames(count, name_len, last_name_len, seed):
        (root / name).write_bytes(b"x")
    return root


def test_profiles_are_the_ipip_499_parameter_sets() -> None:
    assert (UNIXFS_V0_2015.cid_version, UNIXFS_V0_2015.use_raw_leaves) == (0, False)
    assert (UNIXFS_V0_2015.chunk_size, UNIXFS_V0_2015.max_links) == (262144, 174)
    assert (UNIXFS_V0_2015.hamt_threshold, UNIXFS_V0_2015.hamt_estimation) == (262144, "links")
    assert (UNIXFS_V1_2025.cid_version, UNIXFS_V1_2025.use_raw_leaves) == (1, True)
    assert (UNIXFS_V1_2025.chunk_size, UNIXFS_V1_2025.max_links) == (1048576, 1024)
    assert (UNIXFS_V1_2025.hamt_threshold, UNIXFS_V1_2025.hamt_estimation) == (262144, "block")
    assert not UNIXFS_V0_2015.hamt_shard_at_threshold and not UNIXFS_V1_2025.hamt_shard_at_threshold
    assert import_profile("legacy-cid-v0") == UNIXFS_V0_2015 == ImportOptions()


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown import profile 'unixfs-v2'.*unixfs-v1-2025"):
        import_profile("unixfs-v2")


def test_explicit_settings_override_the_profile() -> None:
    options = profile_options("unixfs-v1-2025", chunk_size=4096, max_links=8)
    assert (options.chunk_size, options.max_links, options.cid_version) == (4096, 8, 1)
    assert options.hamt_estimation == "block"
    v0_with_cid_v1 = profile_options("unixfs-v0-2015", cid_version=1)
    assert v0_with_cid_v1.use_raw_leaves  # raw leaves follow the CID version, as in Kubo
    with pytest.raises(ValueError, match="max_links"):
        profile_options("unixfs-v0-2015", max_links=1)


@pytest.mark.parametrize(
    ("profile", "size", "seed", "expected", "fs_type"),
    [
        (
            "unixfs-v0-2015",
            262144,
            "chunk-v0-seed",
            "QmWmRj3dFDZdb6ABvbmKhEL6TmPbAfBZ1t5BxsEyJrcZhE",
            DataType.FILE,
        ),
        (
            "unixfs-v0-2015",
            262145,
            "chunk-v0-seed",
            "QmYyLxtzZyW22zpoVAtKANLRHpDjZtNeDjQdJrcQNWoRkJ",
            DataType.FILE,
        ),
        (
            "unixfs-v1-2025",
            1048576,
            "chunk-v1-seed",
            "bafkreiacndfy443ter6qr2tmbbdhadvxxheowwf75s6zehscklu6ezxmta",
            DataType.RAW,
        ),
        (
            "unixfs-v1-2025",
            1048577,
            "chunk-v1-seed",
            "bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64",
            DataType.FILE,
        ),
    ],
    ids=["v0-at-chunk", "v0-over-chunk", "v1-at-chunk", "v1-over-chunk"],
)
def test_file_on_disk_imported_with_a_profile_has_the_ipip_cid(
    profile: str, size: int, seed: str, expected: str, fs_type: DataType, tmp_path: Path
) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(deterministic_bytes(size, seed))
    assert tree_root(path, import_profile(profile)) == (expected, fs_type)


@pytest.mark.parametrize(
    ("profile", "count", "name_len", "last_name_len", "expected", "fs_type"),
    [
        (
            "unixfs-v0-2015",
            4096,
            30,
            30,
            "QmX5GtRk3TSSEHtdrykgqm4eqMEn3n2XhfkFAis5fjyZmN",
            DataType.DIRECTORY,
        ),
        (
            "unixfs-v0-2015",
            4033,
            31,
            31,
            "QmeMiJzmhpJAUgynAcxTQYek5PPKgdv3qEvFsdV3XpVnvP",
            DataType.HAMT_SHARD,
        ),
        (
            "unixfs-v1-2025",
            4766,
            11,
            21,
            "bafybeic3h7rwruealwxkacabdy45jivq2crwz6bufb5ljwupn36gicplx4",
            DataType.DIRECTORY,
        ),
        (
            "unixfs-v1-2025",
            4766,
            11,
            22,
            "bafybeiegvuterwurhdtkikfhbxcldohmxp566vpjdofhzmnhv6o4freidu",
            DataType.HAMT_SHARD,
        ),
    ],
    ids=["v0-dir-at-threshold", "v0-dir-over-threshold", "v1-dir-at-threshold", "v1-dir-over-threshold"],
)
def test_directory_on_disk_imported_with_a_profile_has_the_ipip_cid(
    profile: str,
    count: int,
    name_len: int,
    last_name_len: int,
    expected: str,
    fs_type: DataType,
    tmp_path: Path,
) -> None:
    directory = x_files(tmp_path / "dir", count, name_len, last_name_len, f"hamt-{profile}")
    assert tree_root(directory, import_profile(profile)) == (expected, fs_type)


def test_every_profile_name_resolves() -> None:
    for name in PROFILES:
        assert isinstance(import_profile(name), ImportOptions)

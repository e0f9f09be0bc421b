"""Large blocks in pack files: placement, reads, integrity, freeing space, and recovery after a stop."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from ipfsreg.blockstore import BlockCorrupted, Datastore
from ipfsreg.blockstore.packs import PACKS_DIRNAME, PackError, PackFiles, Pointer, checksum
from ipfsreg.blockstore.store import _PACK_META, _PACKED, PACK_MIN_BLOCK
from ipfsreg.cid import CID, RAW

LEAF = 256 * 1024


def _block(seed: int, size: int = LEAF) -> tuple[CID, bytes]:
    data = seed.to_bytes(4, "big") * (size // 4) + b"\x00" * (size % 4)
    return CID.hash(data, codec=RAW), data


def _pointer(store: Datastore, cid: CID) -> Pointer:
    raw = _pointer_or_none(store, cid)
    assert raw is not None
    return Pointer.unpack(raw)


def _pack_files(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted((data_dir / PACKS_DIRNAME).iterdir())}


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_large_block_is_stored_in_a_pack_and_small_block_inline(tmp_path: Path) -> None:
    with Datastore.open(tmp_path) as store:
        big_cid, big = _block(1)
        small_cid, small = _block(2, PACK_MIN_BLOCK - 1)
        store.blocks.put_many([(big_cid, big), (small_cid, small)])
        assert store.blocks.get(big_cid) == big
        assert store.blocks.get(small_cid) == small
        assert store._db.get(_PACKED + big_cid.multihash) is not None
        assert store._db.get(b"b/" + big_cid.multihash) is None
        assert store._db.get(b"b/" + small_cid.multihash) == small
        assert _pack_files(tmp_path) == {"00000001.pack": LEAF}
        assert store.blocks.size(big_cid) == LEAF
        assert store.blocks.has(big_cid)
        assert store.blocks.count == 2
        assert store.blocks.total_size == LEAF + len(small)
        assert sorted(store.blocks.iter_multihashes()) == sorted([big_cid.multihash, small_cid.multihash])
        assert list(store.blocks.iter_multihashes()) == sorted(store.blocks.iter_multihashes())


def test_packed_blocks_survive_reopen_and_appends_continue_after_them(tmp_path: Path) -> None:
    blocks = [_block(i) for i in range(3)]
    with Datastore.open(tmp_path) as store:
        store.blocks.put_many(blocks[:2])
    with Datastore.open(tmp_path) as store:
        store.blocks.put_many(blocks[2:])
        for cid, data in blocks:
            assert store.blocks.get(cid) == data
        assert [_pointer(store, cid).offset for cid, _ in blocks] == [0, LEAF, 2 * LEAF]
        assert store.blocks.count == 3


def test_storing_a_packed_block_twice_appends_it_once(tmp_path: Path) -> None:
    cid, data = _block(7)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(cid, data)
        store.blocks.put(cid, data)
        store.blocks.put_many([(cid, data), (cid, data)])
        assert _pack_files(tmp_path) == {"00000001.pack": LEAF}
        assert store.blocks.count == 1


def test_a_full_pack_rotates_to_the_next_one(tmp_path: Path) -> None:
    blocks = [_block(i) for i in range(5)]
    with Datastore.open(tmp_path, pack_size=2 * LEAF) as store:
        for cid, data in blocks:
            store.blocks.put(cid, data)
        assert _pack_files(tmp_path) == {
            "00000001.pack": 2 * LEAF,
            "00000002.pack": 2 * LEAF,
            "00000003.pack": LEAF,
        }
        for cid, data in blocks:
            assert store.blocks.get(cid) == data


def test_flipped_byte_in_a_pack_raises_block_corrupted_and_verify_all_names_it(tmp_path: Path) -> None:
    cid, data = _block(3)
    other_cid, other = _block(4)
    with Datastore.open(tmp_path) as store:
        store.blocks.put_many([(cid, data), (other_cid, other)])
        pointer = _pointer(store, cid)
        with open(tmp_path / PACKS_DIRNAME / "00000001.pack", "r+b") as f:
            f.seek(pointer.offset + 1000)
            byte = f.read(1)
            f.seek(pointer.offset + 1000)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(BlockCorrupted, match=str(cid)):
            store.blocks.get(cid)
        assert store.blocks.get(other_cid) == other
        assert list(store.blocks.verify_all()) == [cid.multihash]


def test_deleting_a_packed_block_punches_its_space_out(tmp_path: Path) -> None:
    blocks = [_block(i) for i in range(4)]
    with Datastore.open(tmp_path) as store:
        store.blocks.put_many(blocks)
        pack = tmp_path / PACKS_DIRNAME / "00000001.pack"
        os.fsync(os.open(pack, os.O_RDONLY))
        before = _allocated(pack)
        assert store.blocks.delete(blocks[1][0])
        assert not store.blocks.has(blocks[1][0])
        assert store.blocks.get_or_none(blocks[1][0]) is None
        assert store.blocks.count == 3
        assert store.blocks.total_size == 3 * LEAF
        for cid, data in blocks[:1] + blocks[2:]:
            assert store.blocks.get(cid) == data
        assert pack.stat().st_size == 4 * LEAF
        assert _allocated(pack) <= before - LEAF + 8192


def test_a_pack_with_no_live_block_left_is_removed(tmp_path: Path) -> None:
    blocks = [_block(i) for i in range(3)]
    with Datastore.open(tmp_path, pack_size=2 * LEAF) as store:
        store.blocks.put_many(blocks)
        assert set(_pack_files(tmp_path)) == {"00000001.pack", "00000002.pack"}
        with store.batch() as batch:
            batch.delete_block(blocks[0][0])
            batch.delete_block(blocks[1][0])
        assert set(_pack_files(tmp_path)) == {"00000002.pack"}
        assert store._db.get(_PACK_META + (1).to_bytes(4, "big")) is None
        assert store.blocks.get(blocks[2][0]) == blocks[2][1]
    with Datastore.open(tmp_path, pack_size=2 * LEAF) as store:
        assert store.blocks.get(blocks[2][0]) == blocks[2][1]
        assert store.blocks.count == 1


def test_a_block_stored_again_after_deletion_is_readable(tmp_path: Path) -> None:
    cid, data = _block(9)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(cid, data)
        store.blocks.put(*_block(10))
        store.blocks.delete(cid)
        store.blocks.put(cid, data)
        assert store.blocks.get(cid) == data
        assert store.blocks.count == 2


def test_a_read_racing_a_delete_finds_nothing_instead_of_reporting_corruption(tmp_path: Path) -> None:
    cid, data = _block(11)
    with Datastore.open(tmp_path) as store:
        store.blocks.put_many([(cid, data), _block(12)])
        stale = _pointer(store, cid)
        store.blocks.delete(cid)
        # The reader looked the pointer up before the delete and reads the punched range after it.
        with pytest.raises(PackError):
            store.packs.read(stale)
        assert store.blocks.get_or_none(cid) is None


def test_bytes_appended_by_a_batch_that_never_committed_are_cut_off_on_open(tmp_path: Path) -> None:
    cid, data = _block(13)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(cid, data)
        # A crash between the pack append and the LevelDB write leaves unreferenced bytes.
        store.packs.append([b"\xab" * 5000])
    assert _pack_files(tmp_path)["00000001.pack"] >= LEAF + 5000
    with Datastore.open(tmp_path) as store:
        assert _pack_files(tmp_path) == {"00000001.pack": LEAF}
        assert store.blocks.get(cid) == data
        later_cid, later = _block(14)
        store.blocks.put(later_cid, later)
        assert _pointer(store, later_cid).offset == LEAF


def test_a_pack_file_no_committed_batch_points_into_is_removed_on_open(tmp_path: Path) -> None:
    with Datastore.open(tmp_path):
        pass
    stray = tmp_path / PACKS_DIRNAME / "00000005.pack"
    stray.write_bytes(b"x" * 100)
    with Datastore.open(tmp_path) as store:
        assert not stray.exists()
        assert store.blocks.count == 0


def test_blocks_lost_with_unsynced_pack_bytes_are_dropped_on_open(tmp_path: Path) -> None:
    kept_cid, kept = _block(15)
    lost_cid, lost = _block(16)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(kept_cid, kept)
        store.blocks.put(lost_cid, lost)
    # As after a system crash that kept LevelDB's log but not the last pack bytes.
    os.truncate(tmp_path / PACKS_DIRNAME / "00000001.pack", LEAF + 100)
    with Datastore.open(tmp_path) as store:
        assert store.blocks.get(kept_cid) == kept
        assert not store.blocks.has(lost_cid)
        assert store.blocks.count == 1
        assert store.blocks.total_size == LEAF
        assert list(store.blocks.verify_all()) == []
        again_cid, again = _block(17)
        store.blocks.put(again_cid, again)
        assert store.blocks.get(again_cid) == again


def test_concurrent_batches_from_threads_each_get_their_own_bytes(tmp_path: Path) -> None:
    with Datastore.open(tmp_path, pack_size=3 * LEAF) as store:
        per_thread = [[_block(1000 * t + i) for i in range(6)] for t in range(4)]
        errors: list[BaseException] = []

        def writer(blocks: list[tuple[CID, bytes]]) -> None:
            try:
                for i in range(0, len(blocks), 2):
                    store.blocks.put_many(blocks[i : i + 2], verify=False)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(blocks,)) for blocks in per_thread]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for blocks in per_thread:
            for cid, data in blocks:
                assert store.blocks.get(cid) == data
        assert store.blocks.count == 24
        assert list(store.blocks.verify_all()) == []


def test_pack_files_append_returns_where_each_value_went_across_rotation(tmp_path: Path) -> None:
    packs = PackFiles(tmp_path, pack_size=10)
    try:
        placed = packs.append([b"a" * 6, b"b" * 6, b"c" * 3, b"d" * 20, b"e"])
        assert placed == [(1, 0), (1, 6), (2, 0), (2, 3), (3, 0)]
        assert packs.read(Pointer(2, 3, 20, checksum(b"d" * 20))) == b"d" * 20
        with pytest.raises(PackError, match="CRC mismatch"):
            packs.read(Pointer(2, 3, 20, 0))
        with pytest.raises(PackError, match="ends before"):
            packs.read(Pointer(3, 8192, 2, checksum(b"e")))
        with pytest.raises(PackError, match="cannot read pack 9"):
            packs.read(Pointer(9, 0, 1, 0))
    finally:
        packs.close()


def test_malformed_pointer_is_reported_as_corruption(tmp_path: Path) -> None:
    cid, data = _block(18)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(cid, data)
        store._db.put(_PACKED + cid.multihash, b"\x00\x01")
        with pytest.raises(BlockCorrupted):
            store.blocks.get(cid)


def test_large_block_stored_inline_by_an_earlier_version_is_still_served(tmp_path: Path) -> None:
    old_cid, old = _block(19)
    new_cid, new = _block(20)
    with Datastore.open(tmp_path) as store:
        # Data dirs written before pack files kept every block inline under b/<multihash>.
        with store.batch() as batch:
            batch.put_block(_block(21, 100)[0], _block(21, 100)[1])  # bumps the statistics key
        store._db.put(b"b/" + old_cid.multihash, old)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(new_cid, new)
        assert store.blocks.get(old_cid) == old
        assert store.blocks.size(old_cid) == LEAF
        assert set(store.blocks.iter_multihashes()) >= {old_cid.multihash, new_cid.multihash}
        assert list(store.blocks.verify_all()) == []
        store.blocks.put(old_cid, old)  # already present inline: not copied into a pack
        assert _pointer_or_none(store, old_cid) is None
        assert store.blocks.delete(old_cid)
        assert not store.blocks.has(old_cid)
        assert store.blocks.get(new_cid) == new


def _pointer_or_none(store: Datastore, cid: CID) -> bytes | None:
    raw: bytes | None = store._db.get(_PACKED + cid.multihash)
    return raw


@pytest.mark.parametrize("direct", [True, False])
def test_direct_and_buffered_appends_store_the_same_bytes_and_start_each_batch_on_a_page(
    tmp_path: Path, direct: bool
) -> None:
    packs = PackFiles(tmp_path, direct=direct)
    try:
        first = packs.append([b"a" * 5000, b"b" * 3])
        second = packs.append([b"c" * 70_000])
        assert first == [(1, 0), (1, 5000)]
        assert second == [(1, 8192)]  # the next page after the first batch's 5003 bytes
        assert packs.read(Pointer(1, 5000, 3, checksum(b"b" * 3))) == b"bbb"
        assert packs.read(Pointer(1, 8192, 70_000, checksum(b"c" * 70_000))) == b"c" * 70_000
        packs.sync()
    finally:
        packs.close()
    raw = (tmp_path / "00000001.pack").read_bytes()
    assert raw[:5003] == b"a" * 5000 + b"bbb"
    assert raw[5003:8192] == bytes(8192 - 5003)
    assert raw[8192 : 8192 + 70_000] == b"c" * 70_000


def test_a_filesystem_refusing_direct_writes_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    cid, data = _block(22)
    with Datastore.open(tmp_path) as store:
        store.blocks.put(cid, data)
        assert not store.packs.direct
        assert store.blocks.get(cid) == data
    monkeypatch.undo()
    with Datastore.open(tmp_path) as store:
        assert store.blocks.get(cid) == data

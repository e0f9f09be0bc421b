"""Blockstore and datastore behaviour: content addressing, atomic batches, integrity, locking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipfsreg.blockstore import (
    MAX_BLOCK_SIZE,
    BlockCorrupted,
    BlockNotFound,
    DataDirLocked,
    Datastore,
    InvalidBlock,
)
from ipfsreg.cid import CID, DAG_PB, RAW


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    ds = Datastore.open(tmp_path / "data")
    yield ds
    ds.close()


def test_put_get_has_roundtrip(store: Datastore) -> None:
    cid = CID.hash(b"hello", codec=RAW)
    assert not store.blocks.has(cid)
    store.blocks.put(cid, b"hello")
    assert store.blocks.has(cid)
    assert store.blocks.get(cid) == b"hello"
    assert store.blocks.size(cid) == 5


def test_cidv0_and_cidv1_of_same_bytes_share_one_entry(store: Datastore) -> None:
    data = b"\x0a\x02\x08\x01"  # a tiny dag-pb node
    v0 = CID.hash(data, codec=DAG_PB, version=0)
    store.blocks.put(v0, data)
    v1_raw = CID.hash(data, codec=RAW)
    assert store.blocks.get(v1_raw) == data
    assert store.blocks.get(v0.to_v1()) == data
    assert store.blocks.count == 1
    assert store.blocks.total_size == len(data)


def test_put_with_wrong_hash_is_refused_and_stores_nothing(store: Datastore) -> None:
    cid = CID.hash(b"right", codec=RAW)
    with pytest.raises(InvalidBlock, match="does not match"):
        store.blocks.put(cid, b"wrong")
    assert not store.blocks.has(cid)
    assert store.blocks.count == 0


def test_oversized_block_is_refused(store: Datastore) -> None:
    data = b"x" * (MAX_BLOCK_SIZE + 1)
    with pytest.raises(InvalidBlock, match="over the"):
        store.blocks.put(CID.hash(data), data)


def test_get_missing_block_raises_block_not_found_naming_the_cid(store: Datastore) -> None:
    cid = CID.hash(b"absent")
    with pytest.raises(BlockNotFound, match=str(cid)):
        store.blocks.get(cid)
    assert store.blocks.get_or_none(cid) is None


def test_delete_updates_stats_and_reports_presence(store: Datastore) -> None:
    cid = CID.hash(b"x" * 10)
    store.blocks.put(cid, b"x" * 10)
    assert store.blocks.delete(cid) is True
    assert store.blocks.delete(cid) is False
    assert store.blocks.count == 0
    assert store.blocks.total_size == 0


def test_stats_count_a_block_once_across_batches_and_survive_reopen(tmp_path: Path) -> None:
    ds = Datastore.open(tmp_path)
    blocks = [(CID.hash(bytes([i]) * 100), bytes([i]) * 100) for i in range(10)]
    with ds.batch() as a, ds.batch() as b:
        for cid, data in blocks:
            a.put_block(cid, data)
            b.put_block(cid, data)
    assert ds.blocks.count == 10
    ds.blocks.put_many(blocks)
    assert (ds.blocks.count, ds.blocks.total_size) == (10, 1000)
    ds.close()
    reopened = Datastore.open(tmp_path)
    assert (reopened.blocks.count, reopened.blocks.total_size) == (10, 1000)
    assert sorted(reopened.blocks.iter_multihashes()) == sorted(c.multihash for c, _ in blocks)
    reopened.close()


def test_batch_is_atomic_when_the_body_raises(store: Datastore) -> None:
    tags = store.keyspace("tags")
    cid = CID.hash(b"layer")
    with pytest.raises(RuntimeError), store.batch() as batch:
        batch.put_block(cid, b"layer")
        batch.put(tags, b"repo/latest", b"digest")
        raise RuntimeError("client went away")
    assert not store.blocks.has(cid)
    assert tags.get(b"repo/latest") is None


def test_batch_commits_blocks_and_keyspace_entries_together(store: Datastore) -> None:
    index = store.keyspace("index")
    cid = CID.hash(b"layer")
    with store.batch(sync=True) as batch:
        batch.put_block(cid, b"layer")
        batch.put(index, b"sha256:abc", cid.to_bytes())
    assert store.blocks.has(cid)
    assert index.get(b"sha256:abc") == cid.to_bytes()


def test_keyspace_items_prefix_start_and_reverse(store: Datastore) -> None:
    ks = store.keyspace("tags")
    other = store.keyspace("tagsx")
    for key in (b"a/1", b"a/2", b"a/3", b"b/1"):
        ks.put(key, key.upper())
    other.put(b"a/9", b"other keyspace")
    assert [k for k, _ in ks.items(b"a/")] == [b"a/1", b"a/2", b"a/3"]
    assert [k for k, _ in ks.items(b"a/", start=b"a/1")] == [b"a/2", b"a/3"]
    assert [k for k, _ in ks.items(b"a/", start=b"")] == [b"a/1", b"a/2", b"a/3"]
    assert [k for k, _ in ks.items(b"a/", reverse=True)] == [b"a/3", b"a/2", b"a/1"]
    assert [k for k, _ in ks.items()] == [b"a/1", b"a/2", b"a/3", b"b/1"]
    ks.delete(b"a/2")
    assert list(ks.keys(b"a/")) == [b"a/1", b"a/3"]


def test_invalid_keyspace_names_are_rejected(store: Datastore) -> None:
    with pytest.raises(ValueError):
        store.keyspace("a/b")
    with pytest.raises(ValueError):
        store.keyspace("")


def test_verify_reads_detects_a_block_stored_under_the_wrong_hash(tmp_path: Path) -> None:
    ds = Datastore.open(tmp_path, verify_reads=True)
    cid = CID.hash(b"genuine")
    ds.blocks.put(cid, b"forged", verify=False)  # simulate on-disk tampering
    with pytest.raises(BlockCorrupted, match=str(cid)):
        ds.blocks.get(cid)
    assert list(ds.blocks.verify_all()) == [cid.multihash]
    ds.close()


def test_committed_batch_cannot_be_reused(store: Datastore) -> None:
    batch = store.batch()
    batch.commit()
    with pytest.raises(Exception, match="already committed"):
        batch.commit()


def test_second_open_in_another_process_names_the_holder(tmp_path: Path) -> None:
    ds = Datastore.open(tmp_path)
    code = (
        "import sys\n"
        "from ipfsreg.blockstore import Datastore, DataDirLocked\n"
        "try:\n"
        f"    Datastore.open({str(tmp_path)!r})\n"
        "except DataDirLocked as e:\n"
        "    print(e.pid, e)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith(str(os.getpid()))
    assert "in use by process" in proc.stdout
    ds.close()
    # Once released, the data dir opens again.
    Datastore.open(tmp_path).close()


def test_second_open_in_same_process_is_refused(tmp_path: Path) -> None:
    ds = Datastore.open(tmp_path)
    with pytest.raises(DataDirLocked):
        Datastore.open(tmp_path)
    ds.close()


def test_concurrent_commits_from_threads_count_each_block_once(store: Datastore) -> None:
    import threading

    blocks = [(CID.hash(i.to_bytes(4, "big") * 64), i.to_bytes(4, "big") * 64) for i in range(400)]

    def writer(offset: int) -> None:
        for start in range(offset, len(blocks), 50):
            with store.batch() as batch:
                for cid, data in blocks[start : start + 50]:
                    batch.put_block(cid, data)

    threads = [threading.Thread(target=writer, args=(0,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.blocks.count == len(blocks)
    assert store.blocks.total_size == sum(len(d) for _, d in blocks)


def test_write_tracking_sees_puts_and_re_puts_but_not_deletes(store: Datastore) -> None:
    old = CID.hash(b"old")
    store.blocks.put(old, b"old")
    with store.track_writes() as written:
        new = CID.hash(b"new")
        store.blocks.put(new, b"new")
        store.blocks.put(old, b"old")
        store.blocks.delete(CID.hash(b"old"))
    store.blocks.put(CID.hash(b"after"), b"after")
    assert written == {new.multihash, old.multihash}


def test_leases_nest_and_release(store: Datastore) -> None:
    a, b = CID.hash(b"a"), CID.hash(b"b")
    with store.lease([a]) as outer:
        with store.lease([a, b]):
            assert store.leased() == {a.multihash, b.multihash}
        assert store.leased() == {a.multihash}
        outer.add(b)
        assert store.leased() == {a.multihash, b.multihash}
    assert store.leased() == set()

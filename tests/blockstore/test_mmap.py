"""LevelDB table files are read with pread, never mapped into the process (blockstore/mmap.py)."""

from __future__ import annotations

import os
from pathlib import Path

from ipfsreg.blockstore import Datastore
from ipfsreg.blockstore.mmap import disable_table_mmap
from ipfsreg.cid import CID, RAW


def _mapped_tables(db_dir: Path) -> list[str]:
    maps = Path("/proc/self/maps").read_text().splitlines()
    return [line for line in maps if str(db_dir) in line and line.endswith(".ldb")]


def test_table_mmap_is_disabled_for_the_bundled_leveldb() -> None:
    # The library plyvel ships is the one CI and the container run: the budget must be found.
    assert disable_table_mmap() is True


def test_blocks_read_back_from_table_files_leave_no_mapping(tmp_path: Path) -> None:
    blocks = [os.urandom(256 * 1024) for _ in range(160)]  # 40 MiB: several table files
    with Datastore.open(tmp_path) as store:
        cids = [CID.hash(data, codec=RAW) for data in blocks]
        for start in range(0, len(blocks), 16):
            with store.batch() as batch:
                for cid, data in zip(cids[start : start + 16], blocks[start : start + 16], strict=True):
                    batch.put_block(cid, data)
        store._db.compact_range()  # push everything out of the memtable into .ldb tables
        assert list(tmp_path.rglob("*.ldb")), "the data should now live in table files"
        for cid, data in zip(cids, blocks, strict=True):
            assert store.blocks.get(cid) == data
        assert _mapped_tables(tmp_path) == []

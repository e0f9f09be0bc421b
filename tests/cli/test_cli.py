"""The `ipfsreg` command line, run as a user would: on a data dir, and through a running server."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ipfsreg.app import ServerInfo
from ipfsreg.config import load_config
from ipfsreg.node.identity import Identity

KUBO_HELLO_WORLD = "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"


def ipfsreg(*args: str | Path, data: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ipfsreg", *map(str, args), "--data", str(data)],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


async def aipfsreg(*args: str | Path, data: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "ipfsreg", *map(str, args), "--data", str(data)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a" / "hello.txt").write_bytes(b"hello world")
    (root / "a" / "b" / "big.bin").write_bytes(random.Random(7).randbytes(700_000))
    (root / "empty.txt").write_bytes(b"")
    os.symlink("a/hello.txt", root / "link")
    return root


def test_add_prints_kubo_cid_as_last_stdout_line_and_cat_returns_bytes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    f = tmp_path / "hw.txt"
    f.write_bytes(b"hello world")
    added = ipfsreg("add", f, data=data)
    assert added.returncode == 0, added.stderr
    assert added.stdout.decode().splitlines()[-1] == KUBO_HELLO_WORLD
    out = ipfsreg("cat", KUBO_HELLO_WORLD, data=data)
    assert out.stdout == b"hello world"


def test_cat_with_offset_and_length_returns_the_range(tmp_path: Path) -> None:
    data = tmp_path / "data"
    payload = random.Random(1).randbytes(600_000)
    f = tmp_path / "f"
    f.write_bytes(payload)
    cid = ipfsreg("add", "-q", f, data=data).stdout.decode().strip()
    out = ipfsreg("cat", cid, "--offset", "262140", "--length", "10", data=data)
    assert out.stdout == payload[262140:262150]
    out = ipfsreg("cat", cid, "--offset", "599990", data=data)
    assert out.stdout == payload[599990:]


def test_add_cid_version_1_uses_raw_leaves(tmp_path: Path) -> None:
    data = tmp_path / "data"
    f = tmp_path / "hw.txt"
    f.write_bytes(b"hello world")
    out = ipfsreg("add", "--cid-version", "1", "-q", f, data=data)
    assert out.stdout.decode().strip() == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def test_add_profile_unixfs_v1_2025_prints_the_ipip_499_cid(tmp_path: Path) -> None:
    # Kubo's deterministic test bytes (tests/unixfs/unixfs_support.py): the ChaCha20 keystream.
    key = hashlib.sha256(b"chunk-v1-seed").digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    f = tmp_path / "f.bin"
    f.write_bytes(stream.update(bytes(1048577)))
    out = ipfsreg("add", "--profile", "unixfs-v1-2025", "-q", f, data=tmp_path / "data")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == "bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64"
    # The configured profile is the default; a flag overrides one setting of it.
    (tmp_path / "data" / "config.toml").write_text('[import]\nprofile = "unixfs-v1-2025"\n')
    out = ipfsreg("add", "-q", f, data=tmp_path / "data")
    assert out.stdout.decode().strip() == "bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64"
    out = ipfsreg("add", "-q", "--cid-version", "0", f, data=tmp_path / "data")
    assert out.stdout.decode().strip().startswith("Qm")


def test_add_max_links_changes_the_file_dag_width(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(random.Random(3).randbytes(10 * 1024))
    data = tmp_path / "data"
    narrow = ipfsreg("add", "-q", "--chunk-size", "1024", "--max-links", "2", f, data=data)
    wide = ipfsreg("add", "-q", "--chunk-size", "1024", f, data=data)
    assert narrow.returncode == wide.returncode == 0, narrow.stderr
    assert narrow.stdout != wide.stdout
    assert ipfsreg("cat", narrow.stdout.decode().strip(), data=data).stdout == f.read_bytes()
    bad = ipfsreg("add", "--max-links", "1", f, data=data)
    assert bad.returncode == 1 and b"max_links must be 2.." in bad.stderr


def test_add_directory_requires_recursive_flag(tree: Path, tmp_path: Path) -> None:
    out = ipfsreg("add", tree, data=tmp_path / "data")
    assert out.returncode == 1
    assert b"use -r" in out.stderr


def test_add_tree_then_get_writes_an_identical_tree(tree: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cid = ipfsreg("add", "-r", "-q", tree, data=data).stdout.decode().strip()
    dest = tmp_path / "out"
    got = ipfsreg("get", cid, "-o", dest, data=data)
    assert got.returncode == 0, got.stderr
    assert (dest / "a" / "hello.txt").read_bytes() == b"hello world"
    assert (dest / "a" / "b" / "big.bin").read_bytes() == (tree / "a" / "b" / "big.bin").read_bytes()
    assert (dest / "empty.txt").read_bytes() == b""
    assert (dest / "empty-dir").is_dir()
    assert os.readlink(dest / "link") == "a/hello.txt"
    assert ipfsreg("cat", f"{cid}/a/hello.txt", data=data).stdout == b"hello world"


def test_cat_of_missing_path_fails_with_one_line_error(tree: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cid = ipfsreg("add", "-r", "-q", tree, data=data).stdout.decode().strip()
    out = ipfsreg("cat", f"{cid}/a/nope", data=data)
    assert out.returncode == 1
    assert out.stderr.decode().strip() == "ipfsreg: error: no entry 'nope' while resolving 'a/nope'"


def test_cat_of_a_directory_fails_clearly(tree: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cid = ipfsreg("add", "-r", "-q", tree, data=data).stdout.decode().strip()
    out = ipfsreg("cat", cid, data=data)
    assert out.returncode == 1
    assert b"not a file" in out.stderr


def test_invalid_cid_is_a_clear_error(tmp_path: Path) -> None:
    out = ipfsreg("cat", "not-a-cid", data=tmp_path / "data")
    assert out.returncode == 1
    assert out.stderr.startswith(b"ipfsreg: error: invalid CID")


def test_export_then_import_into_another_data_dir_round_trips(tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    cid = ipfsreg("add", "-r", "-q", tree, data=first).stdout.decode().strip()
    car = tmp_path / "tree.car"
    assert ipfsreg("export", cid, "-o", car, data=first).returncode == 0
    imported = ipfsreg("import", car, data=second)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.decode().split() == [cid]
    assert ipfsreg("cat", f"{cid}/a/b/big.bin", data=second).stdout == (tree / "a/b/big.bin").read_bytes()


def test_export_car_version_2_to_a_file_and_to_stdout_then_import_round_trips(
    tree: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    cid = ipfsreg("add", "-r", "-q", tree, data=first).stdout.decode().strip()
    car = tmp_path / "tree.car"
    assert ipfsreg("export", cid, "-o", car, "--car-version", "2", data=first).returncode == 0
    written = car.read_bytes()
    assert written.startswith(bytes.fromhex("0aa16776657273696f6e02"))  # the CARv2 pragma
    piped = ipfsreg("export", cid, "-o", "-", "--car-version", "2", data=first)
    assert piped.returncode == 0 and piped.stdout == written
    imported = ipfsreg("import", car, data=second)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.decode().split() == [cid]
    assert ipfsreg("cat", f"{cid}/a/b/big.bin", data=second).stdout == (tree / "a/b/big.bin").read_bytes()


def test_import_of_a_corrupted_car_stores_nothing(tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    cid = ipfsreg("add", "-r", "-q", tree, data=first).stdout.decode().strip()
    car = tmp_path / "tree.car"
    ipfsreg("export", cid, "-o", car, data=first)
    raw = bytearray(car.read_bytes())
    raw[-5] ^= 0xFF  # flip a byte inside the last block
    car.write_bytes(bytes(raw))
    out = ipfsreg("import", car, data=second)
    assert out.returncode == 1
    assert b"does not match" in out.stderr
    stats = load_config(data_dir=second, environ={})
    from ipfsreg.blockstore import Datastore

    with Datastore.open(stats.data_dir) as store:
        assert store.blocks.count == 0


def test_config_show_prints_effective_values(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("[import]\ncid_version = 1\n")
    out = ipfsreg("config", "show", data=data)
    assert out.returncode == 0
    assert "cid_version = 1" in out.stdout.decode()
    assert "[registry]" in out.stdout.decode()


def test_bad_config_file_is_reported_without_traceback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("[import]\nchunk_size = 0\n")
    out = ipfsreg("cat", KUBO_HELLO_WORLD, data=data)
    assert out.returncode == 1
    assert b"Traceback" not in out.stderr
    assert b"chunk_size must be within" in out.stderr


@pytest.fixture
async def server(serve_node: Any, tmp_path: Path) -> AsyncIterator[tuple[Path, ServerInfo]]:
    async with serve_node("served") as info:
        yield tmp_path / "served", info
    assert not (tmp_path / "served" / "api").exists(), "the api file must be removed when the server stops"


async def test_commands_go_through_the_running_server_that_owns_the_data_dir(
    server: tuple[Path, ServerInfo], tree: Path, tmp_path: Path
) -> None:
    data, info = server
    assert (data / "api").read_text().strip() == info.api_url
    added = await aipfsreg("add", "-r", "-q", tree, data=data)
    assert added.returncode == 0, added.stderr
    cid = added.stdout.decode().strip()
    out = await aipfsreg("cat", f"{cid}/a/hello.txt", data=data)
    assert out.stdout == b"hello world"
    ranged = await aipfsreg("cat", f"{cid}/a/b/big.bin", "--offset", "100", "--length", "5", data=data)
    assert ranged.stdout == (tree / "a/b/big.bin").read_bytes()[100:105]
    dest = tmp_path / "fetched"
    got = await aipfsreg("get", cid, "-o", dest, data=data)
    assert got.returncode == 0, got.stderr
    assert (dest / "a/b/big.bin").read_bytes() == (tree / "a/b/big.bin").read_bytes()
    car = tmp_path / "x.car"
    assert (await aipfsreg("export", cid, "-o", car, data=data)).returncode == 0
    imported = await aipfsreg("import", car, data=data)
    assert imported.stdout.decode().split() == [cid]
    missing = await aipfsreg("cat", f"{cid}/nope", data=data)
    assert missing.returncode == 1
    assert b"no entry 'nope'" in missing.stderr


async def test_corrupted_car_through_the_server_is_refused(
    server: tuple[Path, ServerInfo], tree: Path, tmp_path: Path
) -> None:
    data, _info = server
    other = tmp_path / "other"
    cid = (await aipfsreg("add", "-r", "-q", tree, data=other)).stdout.decode().strip()
    car = tmp_path / "x.car"
    await aipfsreg("export", cid, "-o", car, data=other)
    raw = bytearray(car.read_bytes())
    raw[-5] ^= 0xFF
    car.write_bytes(bytes(raw))
    out = await aipfsreg("import", car, data=data)
    assert out.returncode == 1
    assert b"does not match its CID" in out.stderr
    # Nothing was stored: cat of the root fails as not found.
    out = await aipfsreg("cat", f"{cid}/a/hello.txt", data=data)
    assert out.returncode == 1


async def test_id_peers_and_connect_act_on_the_running_node(
    server: tuple[Path, ServerInfo], serve_node: Any
) -> None:
    import json

    data, info = server
    shown = await aipfsreg("id", "--json", data=data)
    assert shown.returncode == 0, shown.stderr
    ident = json.loads(shown.stdout)
    assert ident["id"] == info.peer_id
    assert ident["addrs"] == info.p2p_addrs
    assert all(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in ident["addrs"])

    # A second node, with a data dir of its own, connects to the first.
    async with serve_node("other") as other_info:
        connected = await aipfsreg("connect", other_info.p2p_addrs[0], data=data)
        assert connected.returncode == 0, connected.stderr
        assert connected.stdout.decode().strip() == f"connected {other_info.peer_id}"
        peers = await aipfsreg("peers", "--json", data=data)
        assert other_info.peer_id in [p["peer_id"] for p in json.loads(peers.stdout)]
        stranger = Identity.generate().peer_id_str  # nobody listens for it on port 1
        bad = await aipfsreg("connect", f"/ip4/127.0.0.1/tcp/1/p2p/{stranger}", data=data)
        assert bad.returncode == 1
        assert bad.stderr.startswith(b"ipfsreg: error:")


def test_id_without_a_server_prints_the_persistent_identity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ipfsreg("id", data=data).stdout.decode().split()
    second = ipfsreg("id", data=data).stdout.decode().split()
    assert first == second
    assert first[0].startswith("12D3KooW")
    assert first[1] == f"/ip4/0.0.0.0/tcp/4001/p2p/{first[0]}"


def test_peers_without_a_server_says_to_start_one(tmp_path: Path) -> None:
    out = ipfsreg("peers", data=tmp_path / "data")
    assert out.returncode == 1
    assert b"start `ipfsreg serve`" in out.stderr


async def test_get_with_peer_fetches_missing_blocks_over_bitswap_without_a_server(
    server: tuple[Path, ServerInfo], tree: Path, tmp_path: Path
) -> None:
    data, info = server
    cid = (await aipfsreg("add", "-r", "-q", tree, data=data)).stdout.decode().strip()
    empty = tmp_path / "empty-node"
    dest = tmp_path / "fetched"
    got = await aipfsreg("get", cid, "-o", dest, "--peer", info.p2p_addrs[0], data=empty)
    assert got.returncode == 0, got.stderr
    assert (dest / "a/b/big.bin").read_bytes() == (tree / "a/b/big.bin").read_bytes()
    # The fetched blocks are now local: cat works with no peer at all.
    assert (await aipfsreg("cat", f"{cid}/a/hello.txt", data=empty)).stdout == b"hello world"

"""CAR v1/v2 and UnixFS CIDs against npm's implementations (interop/js/car, installed by `make js-deps`):
@ipld/car reads what `ipfsreg export` writes and cardex accepts its CARv2 index; a CARv2 that @ipld/car
and cardex write imports into ipfsreg; the ipfs-car CLI gives the CIDs of ipfsreg's unixfs-v1-2025
profile (CIDv1, raw leaves, 1 MiB chunks, 1024 links) and unpacks ipfsreg's CARv2."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from interop.oci_images import write_single_image
from ipfsreg.unixfs.car import CarV2Header, parse_car

JS_DIR: Final = Path(__file__).resolve().parent / "js" / "car"
IPFS_CAR: Final = JS_DIR / "node_modules" / ".bin" / "ipfs-car"
TIMEOUT: Final = 300
SEED: Final = 0x15CA


def _require_js() -> str:
    node = shutil.which("node")
    assert node, "node is not installed (Debian package 'nodejs'; `make js-deps` installs it)"
    assert (JS_DIR / "node_modules" / ".installed").exists() or IPFS_CAR.exists(), (
        f"npm packages missing in {JS_DIR}: run `make js-deps`"
    )
    return node


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def ipfsreg(*args: str | Path, data: Path) -> str:
    return run(sys.executable, "-m", "ipfsreg", *args, "--data", data).stdout.strip()


def car_js(*args: str | Path) -> str:
    return run(_require_js(), JS_DIR / "car.mjs", *args).stdout


def ipfs_car(*args: str | Path) -> str:
    _require_js()
    return run(IPFS_CAR, *args).stdout.strip()


def ipfsreg_cat(cid_path: str, data: Path) -> bytes:
    done = subprocess.run(
        [sys.executable, "-m", "ipfsreg", "cat", cid_path, "--data", str(data)],
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def random_file(path: Path, size: int, salt: int) -> Path:
    path.write_bytes(random.Random(SEED + salt).randbytes(size))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files in nested directories; no empty directory, symlink or hidden file (ipfs-car drops or
    follows those, IPIP-499's table)."""
    root = tmp_path / "tree"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello ipfs-car\n")
    random_file(root / "sub" / "big.bin", 2_500_000, 1)
    (root / "sub" / "deep" / "x").write_bytes(b"x")
    return root


@pytest.mark.parametrize("car_version", ["1", "2"])
def test_ipld_car_reads_the_car_ipfsreg_exports_of_an_image_and_cardex_accepts_its_v2_index(
    car_version: str, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_single_image(layout, "v1", layers=2)
    data = tmp_path / "data"
    ipfsreg("push", layout, "app:v1", data=data)
    car = tmp_path / "app.car"
    ipfsreg("export", "app:v1", "-o", car, "--car-version", car_version, data=data)
    seen: dict[str, Any] = json.loads(car_js("read", car))
    payload = car.read_bytes()
    if car_version == "2":
        header = CarV2Header.decode(payload[11:51])
        payload = payload[header.data_offset : header.data_offset + header.data_size]
    roots, blocks = parse_car(payload)
    assert seen["version"] == int(car_version)
    assert seen["roots"] == [str(root) for root in roots]
    assert seen["blocks"] == [str(block.cid) for block in blocks]
    assert seen["indexed"] == (len(blocks) if car_version == "2" else None)


def test_a_car_v2_written_by_ipld_car_and_cardex_imports_into_ipfsreg(tree: Path, tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    root = ipfsreg("add", "-r", "-q", tree, data=source)
    v1 = tmp_path / "tree-v1.car"
    ipfsreg("export", root, "-o", v1, data=source)
    js_v2 = tmp_path / "tree-js-v2.car"
    car_js("write-v2", v1, js_v2)
    assert json.loads(car_js("read", js_v2))["version"] == 2
    assert ipfsreg("import", js_v2, data=target).split() == [root]
    assert ipfsreg_cat(f"{root}/sub/big.bin", target) == (tree / "sub" / "big.bin").read_bytes()
    # The same blocks in the same order: @ipld/car + cardex and ipfsreg write the same CARv2 bytes.
    ours = tmp_path / "tree-v2.car"
    ipfsreg("export", root, "-o", ours, "--car-version", "2", data=source)
    assert js_v2.read_bytes() == ours.read_bytes()


@pytest.mark.parametrize(
    "size", [0, 1, 1048576, 1048577, 3_000_000], ids=["empty", "1-byte", "1-mib", "1-mib-plus-1", "3mb"]
)
def test_ipfs_car_pack_of_a_file_gives_the_unixfs_v1_2025_cid_and_imports(size: int, tmp_path: Path) -> None:
    path = random_file(tmp_path / "file.bin", size, size)
    car = tmp_path / "file.car"
    packed = ipfs_car("pack", path, "--no-wrap", "--output", car)
    data = tmp_path / "data"
    assert ipfsreg("add", "-q", "--profile", "unixfs-v1-2025", path, data=data) == packed
    assert ipfsreg("import", car, data=tmp_path / "imported").split() == [packed]


def test_ipfs_car_pack_of_a_tree_gives_the_unixfs_v1_2025_cid(tree: Path, tmp_path: Path) -> None:
    car = tmp_path / "tree.car"
    packed = ipfs_car("pack", tree, "--output", car)
    assert ipfsreg("add", "-r", "-q", "--profile", "unixfs-v1-2025", tree, data=tmp_path / "data") == packed
    imported = tmp_path / "imported"
    assert ipfsreg("import", car, data=imported).split() == [packed]
    out = tmp_path / "got"
    ipfsreg("get", packed, "-o", out, data=imported)
    assert (out / "sub" / "big.bin").read_bytes() == (tree / "sub" / "big.bin").read_bytes()


def test_ipfs_car_unpacks_a_car_v2_that_ipfsreg_exports(tree: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = ipfsreg("add", "-r", "-q", tree, data=data)
    car = tmp_path / "tree.car"
    ipfsreg("export", root, "-o", car, "--car-version", "2", data=data)
    out = tmp_path / "unpacked"
    ipfs_car("unpack", car, "--output", out)
    for path in tree.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(tree)).read_bytes() == path.read_bytes()

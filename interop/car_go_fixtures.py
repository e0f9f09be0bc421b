"""Check ipfsreg's CAR v2 reader and writer against go-car's published test data (ipld/go-car v2/testdata).

The fixture files are public test data that this repository does not carry, so this is a check run by
hand, not a test (tests/unixfs/test_car_v2.py builds its CARs with ipfsreg's own code, and CI reads and
writes CARv2s with npm's @ipld/car and cardex in interop/test_js_car.py)::

    .venv/bin/python interop/car_go_fixtures.py DIR

DIR holds the files as go-car names them (``sample-v1.car``, ``sample-wrapped-v2.car``, ...). It checks
that ipfsreg wraps ``sample-v1.car`` into go-car's ``sample-wrapped-v2.car`` byte for byte and writes
go-car's MultihashIndexSorted index, reads go-car's CARv2s with the roots and blocks of their CARv1,
decodes and checks go-car's index files, and refuses go-car's malformed fixtures. One line per check;
exit status 0 when every check passes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ipfsreg.unixfs.car import (
    CarBlock,
    CarHeader,
    CarReader,
    CarV2Header,
    check_index,
    multihash_index_sorted,
    parse_index,
    wrap_car_v1,
)
from ipfsreg.unixfs.errors import CarError

SAMPLE_BLOCKS = 1049  # sample-v1.car: blake2b-256 dag-cbor blocks and 6 identity CIDs
MALFORMED = {
    "sample-corrupt-pragma.car": "truncated",
    "sample-rootless-v42.car": "unsupported CAR version 42",
    "sample-v2-corrupt-data-and-index.car": "overflows",
    "sample-v1-with-zero-len-section2.car": "empty CAR section",
}


class Failed(Exception):
    """A check that did not hold; the message says what was found."""


def read(car: bytes, piece: int | None = None) -> tuple[CarHeader, list[CarBlock]]:
    reader = CarReader()
    events = []
    step = piece or len(car) or 1
    for i in range(0, len(car), step):
        events += reader.feed(car[i : i + step])
    reader.close()
    assert reader.header is not None
    return reader.header, [e for e in events if isinstance(e, CarBlock)]


def v2_parts(car: bytes) -> tuple[CarV2Header, bytes, bytes]:
    header = CarV2Header.decode(car[11:51])
    payload = car[header.data_offset : header.data_offset + header.data_size]
    return header, payload, car[header.index_offset :] if header.index_offset else b""


def sections_of(payload: bytes) -> dict[int, bytes]:
    return {block.offset: block.cid.multihash for block in read(payload)[1]}


def expect(condition: bool, problem: str) -> None:
    if not condition:
        raise Failed(problem)


def first_difference(ours: bytes, theirs: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
    )
    return f"{len(ours)} bytes against go-car's {len(theirs)}, first difference at byte {at}"


def checks(directory: Path) -> list[tuple[str, Callable[[], None]]]:
    def file(name: str) -> bytes:
        path = directory / name
        if not path.is_file():
            raise Failed(f"{path} is missing")
        return path.read_bytes()

    def wrap_equals_wrapped() -> None:
        ours, theirs = wrap_car_v1(file("sample-v1.car")), file("sample-wrapped-v2.car")
        expect(ours == theirs, first_difference(ours, theirs))

    def index_equals_carindex() -> None:
        records = [(mh, offset) for offset, mh in sections_of(file("sample-v1.car")).items()]
        ours, theirs = multihash_index_sorted(records), file("sample-multihash-index-sorted.carindex")
        expect(ours == theirs, first_difference(ours, theirs))

    def rewrap_gives_index(name: str) -> Callable[[], None]:
        def check() -> None:
            _, payload, index = v2_parts(file(name))
            expect(bool(index), "go-car's file has no index")
            ours = v2_parts(wrap_car_v1(payload))[2]
            expect(ours == index, first_difference(ours, index))

        return check

    def v2_has_blocks_of_v1(name: str) -> Callable[[], None]:
        def check() -> None:
            v1_header, v1_blocks = read(file("sample-v1.car"))
            header, blocks = read(file(name))
            expect(header.version == 2, f"read as version {header.version}")
            expect(header.roots == v1_header.roots, f"roots {header.roots}, sample-v1 has {v1_header.roots}")
            expect(header.v2 is not None and header.v2.data_offset == 51, f"header {header.v2}")
            expect(len(blocks) == SAMPLE_BLOCKS, f"{len(blocks)} blocks, expected {SAMPLE_BLOCKS}")
            ours = [(b.cid, b.data, b.offset) for b in blocks]
            expect(ours == [(b.cid, b.data, b.offset) for b in v1_blocks], "blocks differ from sample-v1's")

        return check

    def padded_v2_byte_at_a_time() -> None:
        header, blocks = read(file("sample-rw-bs-v2.car"), piece=1)
        expect(header.v2 is not None and header.v2.data_offset == 1464, f"header {header.v2}")
        expect(len(blocks) == 3 and all(b.cid.verify(b.data) for b in blocks), f"{len(blocks)} blocks")

    def index_file_matches(name: str, count: int, hashed: bool) -> Callable[[], None]:
        def check() -> None:
            entries = parse_index(file(name))
            expect(len(entries) == count, f"{len(entries)} entries, expected {count}")
            expect(all((e.code is not None) == hashed for e in entries), "entries with and without codes")
            check_index(entries, sections_of(file("sample-v1.car")))

        return check

    def refused(name: str, message: str) -> Callable[[], None]:
        def check() -> None:
            try:
                read(file(name))
            except CarError as exc:
                expect(message in str(exc), f"refused with {exc!r}, expected {message!r}")
                return
            raise Failed("accepted, go-car's fixture is malformed")

        return check

    return [
        ("wrap sample-v1.car == sample-wrapped-v2.car", wrap_equals_wrapped),
        ("index of sample-v1.car == sample-multihash-index-sorted.carindex", index_equals_carindex),
        *(
            (f"rewrapped payload of {name} gives its index", rewrap_gives_index(name))
            for name in ("sample-unixfs-v2.car", "sample-rw-bs-v2.car")
        ),
        *(
            (f"{name} has the roots and blocks of sample-v1.car", v2_has_blocks_of_v1(name))
            for name in ("sample-wrapped-v2.car", "sample-v2-indexless.car")
        ),
        ("sample-rw-bs-v2.car (padded) read a byte at a time", padded_v2_byte_at_a_time),
        (
            "sample-index.carindex decodes and matches sample-v1.car",
            index_file_matches("sample-index.carindex", SAMPLE_BLOCKS, hashed=False),
        ),
        (
            "sample-multihash-index-sorted.carindex decodes and matches sample-v1.car",
            index_file_matches("sample-multihash-index-sorted.carindex", SAMPLE_BLOCKS - 6, hashed=True),
        ),
        *((f"{name} refused ({message})", refused(name, message)) for name, message in MALFORMED.items()),
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    failures = 0
    for name, check in checks(Path(argv[0])):
        try:
            check()
        except (Failed, CarError) as exc:
            print(f"{name}: {exc}")
            failures += 1
        else:
            print(f"{name}: ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

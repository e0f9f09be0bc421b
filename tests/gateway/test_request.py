"""Pure request parsing of the trustless gateway: content paths, Accept negotiation, format, CAR params,
dag-scope and entity-bytes."""

from __future__ import annotations

import pytest

from ipfsreg.cid import CID
from ipfsreg.gateway.errors import BadRequest, NotAcceptable, NotImplementedByGateway, RangeNotSatisfiable
from ipfsreg.gateway.handler import parse_byte_range
from ipfsreg.gateway.request import (
    CarParams,
    DagScope,
    EntityBytes,
    ResponseFormat,
    negotiate,
    parse_accept,
    parse_content_path,
    parse_entity_bytes,
    parse_request,
)

ROOT = CID.hash(b"root", codec=0x70, version=0)
CAR = "application/vnd.ipld.car"


def test_content_path_decodes_percent_escapes_and_drops_empty_segments() -> None:
    root, segments = parse_content_path(f"{ROOT}/a%20b//c/")
    assert root == ROOT
    assert segments == ("a b", "c")
    assert parse_content_path(str(ROOT.to_v1()))[0] == ROOT.to_v1()


@pytest.mark.parametrize("path", ["nope", "Qm123", "", f"{ROOT}/..", f"{ROOT}/a%2Fb", f"{ROOT}/%00"])
def test_content_path_rejects_bad_cids_and_segments(path: str) -> None:
    with pytest.raises(BadRequest):
        parse_content_path(path)


def test_accept_is_ordered_by_q_and_drops_q_zero() -> None:
    ranges = parse_accept(
        f"text/html;q=0.5, {CAR};version=1;order=dfs;dups=y, application/json;q=0, */*;q=0.1"
    )
    assert [r.type for r in ranges] == [CAR, "text/html", "*/*"]
    assert ranges[0].params == {"version": "1", "order": "dfs", "dups": "y"}


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, (ResponseFormat.DESERIALIZED, CarParams())),
        ("", (ResponseFormat.DESERIALIZED, CarParams())),
        ("application/vnd.ipld.raw", (ResponseFormat.RAW, CarParams())),
        (CAR, (ResponseFormat.CAR, CarParams(1, "dfs", False))),
        (f"{CAR}; version=1; order=dfs; dups=y", (ResponseFormat.CAR, CarParams(1, "dfs", True))),
        (f"{CAR};order=unk", (ResponseFormat.CAR, CarParams(1, "dfs", False))),
        (f"{CAR};order=foo, {CAR};order=dfs;dups=y;q=0.5", (ResponseFormat.CAR, CarParams(1, "dfs", True))),
        ("text/html,application/xhtml+xml,*/*;q=0.8", (ResponseFormat.DESERIALIZED, CarParams())),
        ("application/json", (ResponseFormat.JSON_LISTING, CarParams())),
        ("image/png, */*;q=0.1", (ResponseFormat.DESERIALIZED, CarParams())),
        (f"application/vnd.ipld.raw;q=0.2, {CAR}", (ResponseFormat.CAR, CarParams())),
    ],
)
def test_negotiate_picks_the_best_supported_type(
    accept: str | None, expected: tuple[ResponseFormat, CarParams]
) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    ("accept", "error"),
    [
        ("image/png", NotAcceptable),
        (f"{CAR}; version=2", NotAcceptable),
        (f"{CAR}; dups=maybe", NotAcceptable),
        ("application/x-tar", NotImplementedByGateway),
        ("application/vnd.ipld.dag-json, image/png", NotImplementedByGateway),
    ],
)
def test_negotiate_refuses_unsupported_types(accept: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        negotiate(accept)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("0:*", 0, None),
        ("0:0", 0, 0),
        ("-1024:*", -1024, None),
        ("499:-1000", 499, -1000),
        ("-10:-5", -10, -5),
    ],
)
def test_entity_bytes_syntax(text: str, start: int, end: int | None) -> None:
    assert parse_entity_bytes(text) == EntityBytes(start, end)
    assert str(parse_entity_bytes(text)) == text


@pytest.mark.parametrize(
    "text", ["", "1", "1:", ":2", "a:b", "5:4", "-5:-10", "1:2:3", "*:1", "0x1:2", "1 :2"]
)
def test_entity_bytes_malformed_is_400(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_entity_bytes(text)


@pytest.mark.parametrize(
    ("spec", "size", "expected"),
    [
        (EntityBytes(0, None), 100, (0, 100)),
        (EntityBytes(0, 0), 100, (0, 1)),
        (EntityBytes(10, 19), 100, (10, 20)),
        (EntityBytes(90, 1000), 100, (90, 100)),
        (EntityBytes(-10, None), 100, (90, 100)),
        (EntityBytes(-1000, None), 100, (0, 100)),
        (EntityBytes(10, -11), 100, (10, 90)),
        (EntityBytes(-20, -11), 100, (80, 90)),
        (EntityBytes(100, None), 100, None),
        (EntityBytes(50, -51), 100, None),
        (EntityBytes(0, None), 0, None),
        (EntityBytes(-5, -1), 3, (0, 3)),
    ],
)
def test_entity_bytes_resolve_against_a_size(
    spec: EntityBytes, size: int, expected: tuple[int, int] | None
) -> None:
    assert spec.resolve(size) == expected


@pytest.mark.parametrize(
    ("spec", "size", "past"),
    [
        (EntityBytes(100, None), 100, True),
        (EntityBytes(150, 200), 100, True),
        (EntityBytes(100, -1), 100, True),
        (EntityBytes(99, None), 100, False),
        (EntityBytes(50, -51), 100, False),  # empty, but inside the file
        (EntityBytes(-1000, None), 100, False),  # counted from the end, clamped to the start
        (EntityBytes(0, None), 0, False),  # all of an empty file
        (EntityBytes(1, None), 0, True),
    ],
)
def test_entity_bytes_starts_past_end(spec: EntityBytes, size: int, past: bool) -> None:
    assert spec.starts_past_end(size) is past


def test_request_defaults_to_dag_scope_all_and_entity_bytes_implies_entity() -> None:
    req = parse_request(f"{ROOT}/x", {"format": "car"}, {})
    assert (req.format, req.scope, req.entity_bytes, req.explicit_format) == (
        ResponseFormat.CAR,
        DagScope.ALL,
        None,
        True,
    )
    req = parse_request(str(ROOT), {"entity-bytes": "0:9", "dag-scope": "all"}, {"accept": CAR})
    assert req.scope is DagScope.ENTITY
    assert req.entity_bytes == EntityBytes(0, 9)
    assert not req.explicit_format


def test_dag_scope_and_entity_bytes_are_ignored_for_raw_and_files() -> None:
    req = parse_request(str(ROOT), {"format": "raw", "dag-scope": "bogus", "entity-bytes": "x"}, {})
    assert req.format is ResponseFormat.RAW and req.scope is DagScope.ALL


def test_car_query_params_override_accept_params() -> None:
    req = parse_request(str(ROOT), {"format": "car", "car-dups": "y"}, {"accept": f"{CAR}; dups=n"})
    assert req.car == CarParams(1, "dfs", True)
    req = parse_request(str(ROOT), {"format": "car", "car-version": "1"}, {"accept": f"{CAR}; dups=y"})
    assert req.car.dups is True
    assert req.car.content_type == f"{CAR}; version=1; order=dfs; dups=y"


def test_etags_differ_by_format_scope_range_and_dups() -> None:
    tags = {
        parse_request(str(ROOT), query, headers).etag(ROOT)
        for query, headers in [
            ({"format": "raw"}, {}),
            ({"format": "car"}, {}),
            ({"format": "car", "dag-scope": "block"}, {}),
            ({"format": "car", "entity-bytes": "0:1"}, {}),
            ({"format": "car", "car-dups": "y"}, {}),
            ({}, {}),
        ]
    }
    assert len(tags) == 6


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=5-", 10, (5, 5)),
        ("bytes=-3", 10, (7, 3)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=8-100", 10, (8, 2)),
        ("bytes=0-1,4-5", 10, None),
        ("items=0-1", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=x-2", 10, None),
    ],
)
def test_http_range_for_files(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_byte_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-5", 0)])
def test_http_range_past_the_end_is_416(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_byte_range(header, size)
    assert info.value.headers["Content-Range"] == f"bytes */{size}"

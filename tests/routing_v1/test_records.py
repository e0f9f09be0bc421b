"""Routing V1 records, peer IDs, IPIP-484 filters, cache headers and IPNS record times (pure functions)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from routing_support import PEER_A, PEER_B, PEER_C

from ipfsreg.cid import CID, LIBP2P_KEY, b58decode
from ipfsreg.ipns.record import create_record
from ipfsreg.routing_v1.ipns import cache_headers as ipns_cache_headers
from ipfsreg.routing_v1.ipns import ipns_key, record_times
from ipfsreg.routing_v1.records import (
    PeerRecord,
    RecordError,
    apply_filters,
    cache_headers,
    decode_json,
    decode_ndjson_line,
    decode_record,
    encode_json,
    encode_ndjson,
    parse_filters,
    parse_peer_id,
    peer_record,
)

TCP = "/ip4/127.0.0.1/tcp/4001"
QUIC = "/ip4/127.0.0.1/udp/4001/quic-v1"
IP6 = "/ip6/::1/tcp/4001"
CIRCUIT = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_B}/p2p-circuit"


def _cidv1_of(peer_id: str, base: str = "b") -> str:
    cid = CID.v1(LIBP2P_KEY, b58decode(peer_id))
    if base == "b":
        return cid.encode()
    from multiformats import multibase

    return multibase.encode(cid.to_bytes(), "base36")


# --- peer IDs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("peer_id", [PEER_A, PEER_C])
def test_peer_id_in_base58_is_kept(peer_id: str) -> None:
    assert parse_peer_id(peer_id) == peer_id


def test_peer_id_as_cidv1_libp2p_key_in_base32_or_base36_becomes_base58() -> None:
    assert parse_peer_id(_cidv1_of(PEER_A)) == PEER_A
    assert parse_peer_id(_cidv1_of(PEER_A, "k")) == PEER_A


@pytest.mark.parametrize(
    "bad",
    ["", "hello", "12D3KooWnotbase58000", CID.hash(b"x").encode(), "Qm" + "1" * 44, "/ip4/1.2.3.4", 42, None],
)
def test_bad_peer_ids_are_refused(bad: object) -> None:
    with pytest.raises(RecordError, match="not a peer ID"):
        parse_peer_id(bad)  # type: ignore[arg-type]


# --- records ------------------------------------------------------------------------------------


def test_peer_record_json_has_the_spec_fields_and_keeps_unknown_ones() -> None:
    record = decode_record(
        {
            "Schema": "peer",
            "ID": PEER_A,
            "Addrs": [TCP],
            "Protocols": ["transport-bitswap"],
            "Extra": {"x": 1},
        }
    )
    assert record == PeerRecord(PEER_A, [TCP], ["transport-bitswap"], {"Extra": {"x": 1}})
    assert record.to_json() == {
        "Extra": {"x": 1},
        "Schema": "peer",
        "ID": PEER_A,
        "Addrs": [TCP],
        "Protocols": ["transport-bitswap"],
    }


def test_record_of_another_schema_is_skipped_not_an_error() -> None:
    assert decode_record({"Schema": "bitswap", "ID": PEER_A}) is None


def test_record_addresses_that_are_not_multiaddrs_are_dropped() -> None:
    record = decode_record(
        {"Schema": "peer", "ID": PEER_A, "Addrs": [TCP, "garbage", "/ip4/999.0.0.1/tcp/1"]}
    )
    assert record is not None and record.addrs == [TCP]


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"Schema": "peer"},
        {"Schema": "peer", "ID": "nonsense"},
        {"Schema": "peer", "ID": PEER_A, "Addrs": "/ip4/1.2.3.4/tcp/1"},
        {"Schema": "peer", "ID": PEER_A, "Addrs": [1, 2]},
        {"Schema": "peer", "ID": PEER_A, "Protocols": ["x" * 64]},
    ],
)
def test_malformed_peer_records_raise(obj: object) -> None:
    with pytest.raises(RecordError):
        decode_record(obj)


def test_json_body_round_trips_and_bad_records_are_reported_not_fatal() -> None:
    body = encode_json("Providers", [PeerRecord(PEER_A, [TCP], ["transport-bitswap"])])
    assert json.loads(body) == {
        "Providers": [{"Schema": "peer", "ID": PEER_A, "Addrs": [TCP], "Protocols": ["transport-bitswap"]}]
    }
    mixed = json.dumps({"Providers": [{"Schema": "peer", "ID": "bad"}, json.loads(body)["Providers"][0]]})
    records, skipped = decode_json("Providers", mixed.encode())
    assert [r.peer_id for r in records] == [PEER_A]
    assert len(skipped) == 1 and "not a peer ID" in skipped[0]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"Providers": 5}'])
def test_json_body_that_is_not_the_api_raises(body: bytes) -> None:
    with pytest.raises(RecordError):
        decode_json("Providers", body)


def test_json_body_with_null_or_missing_list_is_empty() -> None:
    assert decode_json("Providers", b'{"Providers": null}') == ([], [])
    assert decode_json("Peers", b"{}") == ([], [])


def test_ndjson_lines() -> None:
    line = encode_ndjson(PeerRecord(PEER_A, [TCP]))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_ndjson_line(line) == PeerRecord(PEER_A, [TCP])
    assert decode_ndjson_line(b"  \n") is None
    with pytest.raises(RecordError):
        decode_ndjson_line(b"{nope")


def test_peer_record_helper_canonicalises_and_drops_bad_addresses() -> None:
    record = peer_record(PEER_A, [TCP, TCP, "bogus"])
    assert record == PeerRecord(PEER_A, [TCP], ["transport-bitswap"])


# --- IPIP-484 filters ---------------------------------------------------------------------------

RECORD = PeerRecord(PEER_A, [TCP, QUIC, IP6, CIRCUIT], ["transport-bitswap"])


def test_no_filters_return_the_record_unchanged() -> None:
    assert apply_filters(RECORD, parse_filters(None, None)) == RECORD


def test_filter_addrs_positive_keeps_addresses_with_any_listed_protocol() -> None:
    kept = apply_filters(RECORD, parse_filters("quic-v1,ip6", None))
    assert kept is not None and kept.addrs == [QUIC, IP6]


def test_filter_addrs_negative_drops_addresses_with_any_negated_protocol() -> None:
    kept = apply_filters(RECORD, parse_filters("!ip6,!p2p-circuit", None))
    assert kept is not None and kept.addrs == [TCP, QUIC]


def test_filter_addrs_positive_and_negative_together_and_case_insensitive() -> None:
    kept = apply_filters(RECORD, parse_filters("TCP,!IP6", None))
    assert kept is not None and kept.addrs == [TCP, CIRCUIT]


def test_provider_without_matching_addresses_is_omitted_unless_unknown_asked_for_empty_ones() -> None:
    assert apply_filters(RECORD, parse_filters("webtransport", None)) is None
    bare = PeerRecord(PEER_B, [], ["transport-bitswap"])
    assert apply_filters(bare, parse_filters("tcp", None)) is None
    assert apply_filters(bare, parse_filters("tcp,unknown", None)) == bare


def test_filter_protocols_keeps_whole_record_when_any_protocol_matches() -> None:
    both = PeerRecord(PEER_A, [TCP], ["transport-bitswap", "transport-ipfs-gateway-http"])
    assert apply_filters(both, parse_filters(None, "transport-ipfs-gateway-http")) == both
    assert apply_filters(both, parse_filters(None, "transport-graphsync-filecoinv1")) is None


def test_filter_protocols_unknown_matches_records_without_protocols() -> None:
    silent = PeerRecord(PEER_B, [TCP], [])
    assert apply_filters(silent, parse_filters(None, "unknown")) == silent
    assert apply_filters(silent, parse_filters(None, "transport-bitswap")) is None


def test_bad_filters_raise() -> None:
    with pytest.raises(RecordError):
        parse_filters("!", None)
    with pytest.raises(RecordError):
        parse_filters(None, "p" * 64)


def test_filters_as_query_parameters() -> None:
    assert parse_filters("tcp,!ip6", "transport-bitswap").query() == {
        "filter-addrs": "tcp,!ip6",
        "filter-protocols": "transport-bitswap",
    }


# --- cache headers ------------------------------------------------------------------------------


def test_cache_headers_are_longer_with_results_than_without() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    found = cache_headers(True, now)
    assert (
        found["Cache-Control"] == "public, max-age=300, stale-while-revalidate=172800, stale-if-error=172800"
    )
    assert found["Last-Modified"] == "Fri, 02 Jan 2026 03:04:05 GMT"
    assert found["Vary"] == "Accept"
    assert cache_headers(False, now)["Cache-Control"].startswith("public, max-age=15,")


# --- IPNS ---------------------------------------------------------------------------------------


KEY = Ed25519PrivateKey.new()
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _record(ttl_s: int, valid_for: timedelta, *, v1: bool = True) -> bytes:
    eol_ns = int((NOW + valid_for).timestamp()) * 10**9
    return create_record(KEY, "/ipfs/bafkqaaa", 1, eol_ns, ttl_s * 10**9, v1_compatible=v1)


def test_ipns_key_of_a_name_as_cid_or_peer_id() -> None:
    assert ipns_key(_cidv1_of(PEER_A)) == b"/ipns/" + b58decode(PEER_A)
    assert ipns_key(_cidv1_of(PEER_A, "k")) == b"/ipns/" + b58decode(PEER_A)
    assert ipns_key(PEER_A) == b"/ipns/" + b58decode(PEER_A)
    with pytest.raises(RecordError):
        ipns_key(CID.hash(b"content").encode())
    with pytest.raises(RecordError):
        ipns_key("not-a-name")


@pytest.mark.parametrize("v1", [True, False], ids=["v1-compatible", "v2-only"])
def test_ipns_record_times_are_its_ttl_and_end_of_validity(v1: bool) -> None:
    times = record_times(_record(30, timedelta(hours=2), v1=v1))
    assert times.ttl == 30
    assert times.expires == NOW + timedelta(hours=2)


def test_ipns_cache_headers_follow_ttl_and_validity() -> None:
    headers = ipns_cache_headers(_record(30, timedelta(hours=1)), NOW)
    assert headers["Cache-Control"] == "public, max-age=30, stale-while-revalidate=3600, stale-if-error=3600"
    assert headers["Expires"] == "Tue, 01 Jan 2030 01:00:00 GMT"
    assert headers["Etag"].startswith('"') and headers["Vary"] == "Accept"


def test_ipns_cache_max_age_never_outlives_the_record() -> None:
    headers = ipns_cache_headers(_record(3600, timedelta(seconds=20)), NOW)
    assert headers["Cache-Control"].startswith("public, max-age=20,")


def test_ipns_cache_headers_of_unreadable_record_default_to_60s() -> None:
    assert ipns_cache_headers(b"\xff\xff\xff")["Cache-Control"] == "public, max-age=60"

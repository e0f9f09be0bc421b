"""Multicast DNS messages for libp2p discovery (pure): go-libp2p's query and answer shapes, compression,
and malformed packets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfsreg.node.discovery.mdns_message import (
    SERVICE,
    TYPE_A,
    TYPE_ANY,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    MdnsError,
    asks_for_peers,
    decode_message,
    encode_name,
    encode_query,
    encode_response,
    peers_in,
    random_instance_name,
    txt_strings,
)

PEER = "12D3KooWHbTFAGSwmikm7yzuk3DkzXCKE95MRFmKLCKLb6aMArr8"
OTHER = "12D3KooWESo69MhW55zWQ4AVvbSmCHZ5ahreyS6fP1nKs9xjb9Qn"
ADDRS = [f"/ip4/198.18.0.1/tcp/4001/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]


def test_browse_query_is_a_ptr_question_for_the_libp2p_service() -> None:
    message = decode_message(encode_query())
    assert not message.is_response
    assert [(q.name, q.type, q.unicast) for q in message.questions] == [("_p2p._udp.local.", TYPE_PTR, False)]
    assert asks_for_peers(message) is not None
    assert decode_message(encode_query(unicast=True)).questions[0].unicast


def test_queries_for_other_services_are_not_ours() -> None:
    assert asks_for_peers(decode_message(encode_query("_http._tcp.local."))) is None
    assert asks_for_peers(decode_message(encode_query(SERVICE, TYPE_ANY))) is not None
    assert asks_for_peers(decode_message(encode_query(SERVICE, TYPE_TXT))) is None


def test_response_holds_ptr_srv_txt_and_a_in_one_message_as_go_zeroconf_needs() -> None:
    instance = random_instance_name()
    message = decode_message(encode_response(instance, ADDRS, ["198.18.0.1"]))
    assert message.is_response and message.questions == []
    by_type = {r.type: r for r in message.records}
    assert by_type[TYPE_PTR].name == SERVICE and by_type[TYPE_PTR].target == f"{instance}.{SERVICE}"
    assert (
        by_type[TYPE_SRV].name == f"{instance}.{SERVICE}" and by_type[TYPE_SRV].target == f"{instance}.local."
    )
    assert by_type[TYPE_TXT].texts == [b"dnsaddr=" + a.encode() for a in ADDRS]
    assert by_type[TYPE_A].name == f"{instance}.local." and by_type[TYPE_A].data == bytes([198, 18, 0, 1])
    assert by_type[TYPE_TXT].cache_flush and not by_type[TYPE_PTR].cache_flush
    assert peers_in(message) == {PEER: ADDRS}


def test_instance_names_are_random_32_to_63_characters_as_go_libp2p_makes_them() -> None:
    names = {random_instance_name() for _ in range(50)}
    assert len(names) == 50
    assert all((32 <= len(n) <= 63 and n.isalnum() and n.islower()) or n.isdigit() for n in names)


def test_goodbye_records_name_no_peer() -> None:
    goodbye = decode_message(encode_response(random_instance_name(), ADDRS, ["198.18.0.1"], ttl=0))
    assert peers_in(goodbye) == {}


def _go_style_response() -> bytes:
    """An answer laid out as go's zeroconf (miekg/dns with Compress) sends it: names compressed."""
    instance = b"k2m3n4p5q6r7s8t9u0v1w2x3y4z5a6b7c8"
    header = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 3)
    service = encode_name(SERVICE)  # at offset 12
    ptr_rdata = bytes([len(instance)]) + instance + b"\xc0\x0c"  # instance + pointer to the service
    answer = service + struct.pack("!HHIH", TYPE_PTR, 1, 3200, len(ptr_rdata)) + ptr_rdata
    instance_at = 12 + len(service) + 10  # where ptr_rdata (the instance name) starts
    pointer_instance = struct.pack("!H", 0xC000 | instance_at)
    host = bytes([len(instance)]) + instance + b"\x05local\x00"
    srv_rdata = struct.pack("!HHH", 0, 0, 4001) + host
    srv = pointer_instance + struct.pack("!HHIH", TYPE_SRV, 0x8001, 3200, len(srv_rdata)) + srv_rdata
    texts = [
        b"dnsaddr=/ip4/198.18.0.2/tcp/4001/p2p/" + OTHER.encode(),
        b"dnsaddr=/ip4/198.18.0.2/udp/4001/quic-v1/p2p/" + OTHER.encode(),
    ]
    txt_rdata = b"".join(bytes([len(t)]) + t for t in texts)
    txt = pointer_instance + struct.pack("!HHIH", TYPE_TXT, 0x8001, 3200, len(txt_rdata)) + txt_rdata
    host_at = 12 + len(service) + 10 + len(ptr_rdata) + len(srv) - len(host)
    a = (
        struct.pack("!H", 0xC000 | host_at)
        + struct.pack("!HHIH", TYPE_A, 0x8001, 3200, 4)
        + bytes([198, 18, 0, 2])
    )
    return header + answer + srv + txt + a


def test_compressed_go_style_response_is_read() -> None:
    message = decode_message(_go_style_response())
    assert peers_in(message) == {
        OTHER: [f"/ip4/198.18.0.2/tcp/4001/p2p/{OTHER}", f"/ip4/198.18.0.2/udp/4001/quic-v1/p2p/{OTHER}"]
    }
    a_record = next(r for r in message.records if r.type == TYPE_A)
    srv_record = next(r for r in message.records if r.type == TYPE_SRV)
    assert a_record.name == srv_record.target


def test_txt_strings_that_are_not_peer_addresses_are_skipped() -> None:
    bad = [
        b"dnsaddr=/ip4/198.18.0.3/tcp/1",  # no /p2p/
        b"dnsaddr=not a multiaddr/p2p/" + PEER.encode(),
        b"dnsaddr2=/ip4/198.18.0.3/tcp/1/p2p/" + PEER.encode(),  # py-libp2p's extra keys: go ignores them too
        b"something=else",
    ]
    good = b"dnsaddr=/ip4/198.18.0.4/tcp/1/p2p/" + OTHER.encode()
    instance = "abcdefghijklmnopqrstuvwxyz012345"
    rdata = b"".join(bytes([len(t)]) + t for t in [*bad, good])
    header = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0)
    body = encode_name(f"{instance}.{SERVICE}") + struct.pack("!HHIH", TYPE_TXT, 1, 120, len(rdata)) + rdata
    assert peers_in(decode_message(header + body)) == {OTHER: [good[len(b"dnsaddr=") :].decode()]}


def test_txt_strings_longer_than_255_bytes_are_left_out() -> None:
    long = "/dns4/" + "a" * 250 + ".local/tcp/1/p2p/" + PEER
    assert txt_strings([long, ADDRS[0], ADDRS[0]]) == [b"dnsaddr=" + ADDRS[0].encode()]


def test_queries_carry_no_peers() -> None:
    assert peers_in(decode_message(encode_query())) == {}


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00" * 11,
        struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + b"\x05abc",  # label past the end
        struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x0c\x00\x01",  # pointer to itself
        struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + b"\x80abc",  # reserved label type
        struct.pack("!HHHHHH", 0, 0, 1000, 0, 0, 0),  # absurd counts
        struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0)
        + encode_name(SERVICE)
        + struct.pack("!HHIH", 16, 1, 1, 50),
        struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0)
        + encode_name(SERVICE)
        + struct.pack("!HHIH", 16, 1, 1, 2)
        + b"\x09a",
        b"\x00" * 12
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x00",
    ],
    ids=[
        "empty",
        "short-header",
        "label-past-end",
        "pointer-loop",
        "bad-label-type",
        "too-many",
        "rdata-past-end",
        "txt-past-record",
        "name-too-long",
    ],
)
def test_malformed_packets_raise(packet: bytes) -> None:
    if packet.startswith(b"\x00" * 12) and len(packet) > 12:
        packet = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + packet[12:] + b"\x00\x0c\x00\x01"
    with pytest.raises(MdnsError):
        decode_message(packet)


@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_mdns_error(packet: bytes) -> None:
    try:
        message = decode_message(packet)
    except MdnsError:
        return
    peers_in(message)
    asks_for_peers(message)

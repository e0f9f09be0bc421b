"""Pure upstream routing: registry hosts as ``ns`` names them, ``[[mirror.upstream]]`` matching, the
default rule, path-led names (CRI-O / podman), and the fleet's fetcher rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfsreg.config import ConfigError
from ipfsreg.mirror.claims import distance, fetcher_for
from ipfsreg.mirror.rules import check_settings, path_namespace, private_namespaces, route
from ipfsreg.mirror.settings import MirrorSettings, UpstreamSettings
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.names import canonical_namespace, parse_namespace


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("Quay.IO", "quay.io"),
        ("localhost", "localhost"),
        ("localhost:5000", "localhost:5000"),
        ("127.0.0.1:5001", "127.0.0.1:5001"),
        ("[::1]:5000", "[::1]:5000"),
        ("ghcr.io", "ghcr.io"),
    ],
)
def test_registry_hosts_are_canonical(text: str, host: str) -> None:
    assert canonical_namespace(text) == host
    assert parse_namespace(text) == host


@pytest.mark.parametrize(
    "text", ["library", "ipfs", "", "a b", "-x.io", "x.io:", "x.io:123456", "a/b.io", "x" * 300]
)
def test_names_that_are_not_registry_hosts_are_refused(text: str) -> None:
    assert canonical_namespace(text) is None
    with pytest.raises(RegistryError) as caught:
        parse_namespace(text)
    assert caught.value.code == "NAME_INVALID"


def test_a_listed_registry_routes_to_its_url_with_its_credentials() -> None:
    settings = MirrorSettings(
        upstream=[UpstreamSettings("quay.io", "https://q.example/", username="u", password="p")]
    )
    found = route(settings, "quay.io", "org/app")
    assert found is not None
    assert (found.url, found.remote, found.username, found.password) == (
        "https://q.example",
        "org/app",
        "u",
        "p",
    )


def test_docker_hub_without_a_url_is_registry_1() -> None:
    found = route(MirrorSettings(upstream=[UpstreamSettings("docker.io")]), "docker.io", "library/x")
    assert found is not None and found.url == "https://registry-1.docker.io"


def test_the_longest_matching_prefix_wins_and_brings_its_upstream_prefix() -> None:
    settings = MirrorSettings(
        upstream=[
            UpstreamSettings("docker.io", "https://a"),
            UpstreamSettings("docker.io", "https://b", repositories=["myorg/"], upstream_prefix="hub/"),
            UpstreamSettings("docker.io", "https://c", repositories=["myorg/secret/"], private=True),
        ]
    )
    assert (r := route(settings, "docker.io", "library/x")) is not None and r.url == "https://a"
    assert (r := route(settings, "docker.io", "myorg/app")) is not None and (r.url, r.remote) == (
        "https://b",
        "hub/myorg/app",
    )
    assert (r := route(settings, "docker.io", "myorg/secret/app")) is not None and r.private
    assert private_namespaces(settings) == {"docker.io"}


def test_a_listed_registry_with_no_matching_entry_has_no_upstream() -> None:
    settings = MirrorSettings(
        upstream=[UpstreamSettings("ghcr.io", "https://g", repositories=["allowed/"])],
        default_url="https://{ns}",
    )
    assert route(settings, "ghcr.io", "other/app") is None


def test_the_default_rule_fills_in_the_registry_host() -> None:
    settings = MirrorSettings(default_url="https://{ns}/")
    assert (r := route(settings, "quay.io", "a/b")) is not None and r.url == "https://quay.io"
    assert (r := route(settings, "docker.io", "a/b")) is not None and r.url == "https://registry-1.docker.io"
    assert route(MirrorSettings(), "quay.io", "a/b") is None


def test_a_name_led_by_a_mirrored_registry_is_split_into_registry_and_name() -> None:
    settings = MirrorSettings(upstream=[UpstreamSettings("docker.io")])
    assert path_namespace(settings, "docker.io/library/x") == ("docker.io", "library/x")
    assert path_namespace(settings, "quay.io/library/x") is None  # not mirrored
    assert path_namespace(settings, "library/x") is None
    assert path_namespace(settings, "docker.io") is None
    assert path_namespace(MirrorSettings(default_url="https://{ns}"), "quay.io/a/b") == ("quay.io", "a/b")


def test_bad_upstream_entries_are_reported() -> None:
    with pytest.raises(ConfigError):
        UpstreamSettings("docker.io", "ftp://x")
    with pytest.raises(ConfigError):
        UpstreamSettings("")
    problems = check_settings(
        MirrorSettings(
            upstream=[
                UpstreamSettings("library"),
                UpstreamSettings("a.io", password="p", token_file=__file__),
            ]
        )
    )  # type: ignore[arg-type]
    assert len(problems) == 2


def test_the_fetcher_is_the_claimant_nearest_the_digest() -> None:
    claimants = [f"12D3KooPeer{i}" for i in range(5)]
    digest = "sha256:" + "ab" * 32
    chosen = fetcher_for(digest, claimants)
    assert all(distance(chosen, digest) <= distance(peer, digest) for peer in claimants)
    assert fetcher_for(digest, reversed(claimants)) == chosen  # the same whatever the order


def test_different_layers_get_different_fetchers() -> None:
    claimants = [f"peer-{i}" for i in range(8)]
    fetchers = {fetcher_for(f"sha256:{i:064x}", claimants) for i in range(64)}
    assert len(fetchers) > 3


@given(st.sets(st.text(min_size=1, max_size=20), min_size=2, max_size=10), st.text(min_size=1))
def test_following_nearer_claimants_never_loops(claimants: set[str], digest: str) -> None:
    # Each node follows the nearest claimant it knows; views differ, yet every chain ends.
    ordered = sorted(claimants)
    views = {peer: {peer, *ordered[: i + 2]} for i, peer in enumerate(ordered)}
    for start in ordered:
        seen = {start}
        current = start
        while (nxt := fetcher_for(digest, views[current])) != current:
            assert nxt not in seen
            seen.add(nxt)
            current = nxt

"""UpstreamClient against a fake registry over real HTTP on loopback: auth challenge flows, digest
checks of manifests and streamed blobs, redirects, and typed errors carrying the upstream's message."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from fake_upstream import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, FakeUpstream, running_upstream, sha256

from ipfsreg.upstream import (
    UpstreamClient,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)

ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST)


def _image(state: FakeUpstream, repo: str = "library/app", tag: str = "v1") -> tuple[str, bytes]:
    layer = bytes(range(256)) * 1000
    digest, _ = state.add_image(repo, tag, [layer])
    return digest, layer


async def test_anonymous_token_flow_fetches_a_token_for_the_repository_scope() -> None:
    async with running_upstream(FakeUpstream(auth="token")) as state:
        digest, _ = _image(state)
        async with UpstreamClient(state.url) as client:
            manifest = await client.get_manifest("library/app", "v1", ACCEPT)
        assert manifest.digest == digest
        assert manifest.media_type == OCI_MANIFEST
        assert sha256(manifest.body) == digest
        assert state.token_requests == [
            {"service": "fake-registry", "scope": ["repository:library/app:pull"], "user": None}
        ]


async def test_token_flow_sends_basic_credentials_to_the_realm() -> None:
    async with running_upstream(FakeUpstream(auth="token", users={"alice": "pw"})) as state:
        _image(state)
        async with UpstreamClient(state.url, username="alice", password="pw") as client:
            await client.get_manifest("library/app", "v1", ACCEPT)
        assert state.token_requests[0]["user"] == "alice"


async def test_token_is_cached_per_scope_until_it_expires() -> None:
    async with running_upstream(FakeUpstream(auth="token")) as state:
        _image(state, "one/app")
        _image(state, "two/app")
        async with UpstreamClient(state.url) as client:
            for _ in range(3):
                await client.get_manifest("one/app", "v1", ACCEPT)
            await client.get_manifest("two/app", "v1", ACCEPT)
        scopes = [r["scope"] for r in state.token_requests]
        assert scopes == [["repository:one/app:pull"], ["repository:two/app:pull"]]


async def test_expired_token_is_fetched_again() -> None:
    # A token lifetime shorter than the client's safety margin is stale at once: every request
    # must get a new one (this checks expiry handling without waiting).
    async with running_upstream(FakeUpstream(auth="token", token_seconds=1)) as state:
        _image(state)
        async with UpstreamClient(state.url) as client:
            await client.get_manifest("library/app", "v1", ACCEPT)
            await client.get_manifest("library/app", "v1", ACCEPT)
        assert len(state.token_requests) == 2


async def test_token_service_refusing_credentials_raises_unauthorized() -> None:
    async with running_upstream(FakeUpstream(auth="token", users={"alice": "pw"})) as state:
        _image(state)
        async with UpstreamClient(state.url, username="alice", password="wrong") as client:
            with pytest.raises(UpstreamUnauthorized, match="invalid credentials"):
                await client.get_manifest("library/app", "v1", ACCEPT)


async def test_basic_challenge_is_answered_with_the_credentials() -> None:
    async with running_upstream(FakeUpstream(auth="basic", users={"bob": "secret"})) as state:
        digest, _ = _image(state)
        async with UpstreamClient(state.url, username="bob", password="secret") as client:
            await client.ping()
            assert (await client.get_manifest("library/app", "v1", ACCEPT)).digest == digest
        # After the first challenge, credentials go with every request: one 401 in all.
        assert state.count("GET", "/v2/") == 3


async def test_basic_challenge_with_wrong_credentials_raises_unauthorized_with_the_message() -> None:
    async with running_upstream(FakeUpstream(auth="basic", users={"bob": "secret"})) as state:
        _image(state)
        async with UpstreamClient(state.url, username="bob", password="nope") as client:
            with pytest.raises(UpstreamUnauthorized, match="authentication required"):
                await client.get_manifest("library/app", "v1", ACCEPT)


async def test_basic_challenge_without_credentials_raises_unauthorized() -> None:
    state = FakeUpstream(auth="basic", users={"bob": "secret"})
    async with running_upstream(state), UpstreamClient(state.url) as client:
        with pytest.raises(UpstreamUnauthorized):
            await client.ping()


async def test_manifest_by_digest_is_verified_against_the_digest() -> None:
    async with running_upstream() as state:
        digest, _ = _image(state)
        body, media_type = state.manifests[("library/app", digest)]
        state.manifests[("library/app", digest)] = (body + b" ", media_type)
        state.omit_digest_header = True
        async with UpstreamClient(state.url) as client:
            with pytest.raises(UpstreamDigestMismatch):
                await client.get_manifest("library/app", digest, ACCEPT)


async def test_manifest_by_tag_is_checked_against_docker_content_digest() -> None:
    async with running_upstream(FakeUpstream(wrong_digest_header=True)) as state:
        _image(state)
        async with UpstreamClient(state.url) as client:
            with pytest.raises(UpstreamDigestMismatch):
                await client.get_manifest("library/app", "v1", ACCEPT)


async def test_manifest_by_tag_without_digest_header_gets_its_computed_digest() -> None:
    async with running_upstream(FakeUpstream(omit_digest_header=True)) as state:
        digest, _ = _image(state)
        async with UpstreamClient(state.url) as client:
            assert (await client.get_manifest("library/app", "v1", ACCEPT)).digest == digest


async def test_manifest_larger_than_the_limit_is_refused() -> None:
    async with running_upstream() as state:
        _image(state)
        async with UpstreamClient(state.url, max_manifest_bytes=50) as client:
            with pytest.raises(UpstreamError, match="larger than 50 bytes"):
                await client.get_manifest("library/app", "v1", ACCEPT)


async def test_head_manifest_reports_digest_media_type_and_size() -> None:
    async with running_upstream() as state:
        digest, _ = _image(state)
        async with UpstreamClient(state.url) as client:
            head = await client.head_manifest("library/app", "v1", ACCEPT)
        assert head.digest == digest
        assert head.media_type == OCI_MANIFEST
        assert head.size == len(state.manifests[("library/app", digest)][0])


async def test_stream_blob_yields_the_verified_bytes() -> None:
    async with running_upstream(FakeUpstream(auth="token")) as state:
        _, layer = _image(state)
        async with UpstreamClient(state.url) as client:
            data = b"".join([c async for c in client.stream_blob("library/app", sha256(layer))])
            assert await client.stat_blob("library/app", sha256(layer)) == len(layer)
        assert data == layer


async def test_stream_blob_follows_redirects_without_sending_credentials_along() -> None:
    async with running_upstream(FakeUpstream(auth="token", redirect_blobs=True)) as state:
        _, layer = _image(state)
        async with UpstreamClient(state.url) as client:
            data = b"".join([c async for c in client.stream_blob("library/app", sha256(layer))])
        assert data == layer
        assert state.count("GET", "/_blobdata/") == 1


async def test_stream_blob_with_wrong_bytes_raises_before_the_last_piece() -> None:
    async with running_upstream(FakeUpstream(chunk_bytes=10_000)) as state:
        _, layer = _image(state)
        state.corrupt.add(sha256(layer))
        received: list[bytes] = []
        async with UpstreamClient(state.url) as client:
            with pytest.raises(UpstreamDigestMismatch):
                async for chunk in client.stream_blob("library/app", sha256(layer)):
                    received.append(chunk)
        assert 0 < sum(map(len, received)) < len(layer)


async def test_missing_blob_raises_not_found_with_the_upstream_message() -> None:
    async with running_upstream() as state, UpstreamClient(state.url) as client:
        with pytest.raises(UpstreamNotFound, match="BLOB_UNKNOWN"):
            async for _ in client.stream_blob("library/app", sha256(b"nothing")):
                pass
        with pytest.raises(UpstreamNotFound, match="MANIFEST_UNKNOWN"):
            await client.get_manifest("library/app", "nope", ACCEPT)


async def test_server_error_raises_unavailable() -> None:
    async with running_upstream(FakeUpstream(down=True)) as state, UpstreamClient(state.url) as client:
        with pytest.raises(UpstreamUnavailable, match="down for maintenance"):
            await client.get_manifest("library/app", "v1", ACCEPT)


async def test_unreachable_upstream_raises_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with UpstreamClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await client.ping()


async def test_malformed_digest_is_refused_before_any_request() -> None:
    async with running_upstream() as state:
        async with UpstreamClient(state.url) as client:
            with pytest.raises(UpstreamError, match="malformed"):
                await client.stat_blob("library/app", "sha256:xyz")
        assert state.requests == []


@pytest.mark.parametrize("ranges", [True, False])
async def test_a_blob_from_an_offset_is_the_rest_of_its_bytes_whether_or_not_ranges_are_honoured(
    ranges: bool,
) -> None:
    async with running_upstream(FakeUpstream(ranges=ranges)) as state:
        _, layer = _image(state)
        async with (
            UpstreamClient(state.url) as client,
            client.open_blob("library/app", sha256(layer), start=1000) as blob,
        ):
            assert blob.size == len(layer)
            assert blob.partial is ranges
            assert b"".join([chunk async for chunk in blob.chunks()]) == layer[1000:]
        assert state.blob_bytes_sent[sha256(layer)] == len(layer) - (1000 if ranges else 0)


async def test_an_offset_past_the_end_of_a_blob_is_an_error() -> None:
    async with running_upstream(FakeUpstream(ranges=False)) as state:
        _, layer = _image(state)
        async with UpstreamClient(state.url) as client:
            with pytest.raises(UpstreamError):
                async with client.open_blob("library/app", sha256(layer), start=len(layer) + 5) as blob:
                    async for _ in blob.chunks():
                        pass


async def test_a_token_file_without_a_username_is_a_bearer_token_reread_when_it_changes(
    tmp_path: Path,
) -> None:
    async with running_upstream(FakeUpstream(auth="token", static_tokens={"first"})) as state:
        digest, _ = _image(state)
        token = tmp_path / "token"
        token.write_text("first\n")
        async with UpstreamClient(state.url, token_file=token) as client:
            assert (await client.get_manifest("library/app", "v1", ACCEPT)).digest == digest
            token.write_text("second\n")
            os.utime(token, (1, 1))  # a new mtime whatever the clock's resolution
            with pytest.raises(UpstreamUnauthorized, match="token"):
                await client.get_manifest("library/app", "v1", ACCEPT)
            state.static_tokens.add("second")
            assert (await client.get_manifest("library/app", "v1", ACCEPT)).digest == digest
        assert state.token_requests == []  # never the token service: the file is the token

"""Basic auth over real HTTP: the registry app behind AuthApp served by hypercorn on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from auth_support import PASSWORDS, AuthServer, auth_settings, running_auth_registry, write_htpasswd

from ipfsreg.auth import AuthConfigError, auth_app
from ipfsreg.blockstore import Datastore
from ipfsreg.metrics import Metrics, ObservedApp
from ipfsreg.registry.app import create_app, serve_registry
from ipfsreg.registry.digests import parse_digest

RULES = [
    "alice:*:pull,push,delete",
    "alice:registry:catalog:*",
    "bob:team/*:pull",
    "carol:a:pull,push",
    "carol:dst:push",
    "*:public/*:pull",
]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthServer]:
    settings = auth_settings(
        htpasswd=write_htpasswd(tmp_path / "htpasswd", {u: p for u, p in PASSWORDS.items() if u != "eve"}),
        auth_realm="ipfsreg-test",
        access=RULES,
    )
    async with running_auth_registry(tmp_path / "data", settings) as srv:
        yield srv


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> httpx.Response:
    return await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data)


async def push_image(client: httpx.AsyncClient, name: str, tag: str) -> tuple[str, bytes]:
    config, layer = b'{"architecture":"amd64","os":"linux"}', os.urandom(1000)
    for blob in (config, layer):
        assert (await push_blob(client, name, blob)).status_code == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201, resp.text
    return sha256(manifest), layer


def assert_oci_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert resp.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = resp.json()
    assert body["errors"][0]["code"] == code
    return body


async def test_base_without_credentials_returns_401_with_basic_challenge(server: AuthServer) -> None:
    async with server.client() as client:
        resp = await client.get("/v2/")
    assert_oci_error(resp, 401, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="ipfsreg-test"'


async def test_base_with_valid_credentials_returns_200(server: AuthServer) -> None:
    async with server.client("bob") as client:
        resp = await client.get("/v2/")
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(b"alice:wrong").decode(),
        "Basic " + base64.b64encode(b"eve:eve-secret").decode(),  # not in the file
        "Basic " + base64.b64encode(b"alice").decode(),
        "Basic not-base64!",
        "Bearer some.token.here",
        "Digest username=alice",
    ],
)
async def test_wrong_or_malformed_credentials_return_401_even_where_anonymous_could_pull(
    server: AuthServer, authorization: str
) -> None:
    async with server.client("alice") as alice:
        await push_image(alice, "public/app", "v1")
    async with server.client() as client:
        assert (await client.get("/v2/public/app/manifests/v1")).status_code == 401  # no anonymous rule
        resp = await client.get("/v2/public/app/manifests/v1", headers={"Authorization": authorization})
    assert_oci_error(resp, 401, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="ipfsreg-test"'


async def test_pull_only_user_can_pull_but_push_and_delete_are_denied_with_403(server: AuthServer) -> None:
    async with server.client("alice") as alice:
        digest, layer = await push_image(alice, "team/app", "v1")
    async with server.client("bob") as bob:
        assert (await bob.get("/v2/team/app/manifests/v1")).status_code == 200
        assert (await bob.get(f"/v2/team/app/blobs/{sha256(layer)}")).content == layer
        assert (await bob.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]
        denied = await push_blob(bob, "team/app", b"bob's layer")
        body = assert_oci_error(denied, 403, "DENIED")
        assert body["errors"][0]["detail"] == {"type": "repository", "name": "team/app", "action": "push"}
        assert_oci_error(await bob.post("/v2/team/app/blobs/uploads/"), 403, "DENIED")
        assert_oci_error(await bob.delete(f"/v2/team/app/manifests/{digest}"), 403, "DENIED")
        assert_oci_error(await bob.delete(f"/v2/team/app/blobs/{sha256(layer)}"), 403, "DENIED")
        assert_oci_error(
            await bob.put("/v2/team/app/manifests/v2", content=b"{}", headers={"Content-Type": OCI_MANIFEST}),
            403,
            "DENIED",
        )
        assert (await bob.get("/v2/team/app/manifests/v1")).status_code == 200  # nothing was deleted
    assert server.store.blob_info(parse_digest(sha256(b"bob's layer"))) is None


async def test_rights_on_a_repository_do_not_extend_to_names_below_or_beside_it(server: AuthServer) -> None:
    async with server.client("carol") as carol:
        assert (await push_blob(carol, "a", b"ok")).status_code == 201
        for name in ("a/b", "ab", "b/a", "team/app"):
            assert_oci_error(await push_blob(carol, name, b"no"), 403, "DENIED")
            assert_oci_error(await carol.get(f"/v2/{name}/tags/list"), 403, "DENIED")


async def test_path_tricks_in_names_are_invalid_not_granted(server: AuthServer) -> None:
    async with server.client("carol") as carol:
        for path in ("/v2/a/../team/app/tags/list", "/v2/a/%2e%2e/team/app/tags/list", "/v2/A/tags/list"):
            resp = await carol.get(httpx.URL(server.url + path))
            assert resp.status_code in (400, 403, 404), (path, resp.status_code)
            assert resp.status_code != 200
        resp = await carol.get("/v2/A/tags/list")
        assert_oci_error(resp, 400, "NAME_INVALID")
    async with server.client() as anonymous:
        assert_oci_error(await anonymous.get("/v2/A/tags/list"), 401, "UNAUTHORIZED")


async def test_head_denied_has_no_body(server: AuthServer) -> None:
    async with server.client("alice") as alice:
        _, layer = await push_image(alice, "team/app", "v1")
    async with server.client() as anonymous:
        resp = await anonymous.head(f"/v2/team/app/blobs/{sha256(layer)}")
    assert resp.status_code == 401 and resp.content == b""
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="ipfsreg-test"'


async def test_every_authenticated_user_may_pull_public_by_star_rule(server: AuthServer) -> None:
    async with server.client("alice") as alice:
        await push_image(alice, "public/app", "v1")
    async with server.client("carol") as carol:
        assert (await carol.get("/v2/public/app/manifests/v1")).status_code == 200
        assert_oci_error(await push_blob(carol, "public/app", b"x"), 403, "DENIED")


async def test_catalog_needs_the_catalog_rule(server: AuthServer) -> None:
    async with server.client("alice") as alice:
        await push_image(alice, "team/app", "v1")
        assert (await alice.get("/v2/_catalog")).json() == {"repositories": ["team/app"]}
    async with server.client("bob") as bob:
        assert_oci_error(await bob.get("/v2/_catalog"), 403, "DENIED")
    async with server.client() as anonymous:
        assert_oci_error(await anonymous.get("/v2/_catalog"), 401, "UNAUTHORIZED")


async def test_gateway_needs_the_gateway_rule(server: AuthServer) -> None:
    async with server.client("alice") as alice:
        resp = await alice.get("/ipfs/bafkqaaa")
    assert_oci_error(resp, 403, "DENIED")


async def test_mount_from_a_repository_the_user_cannot_pull_opens_a_session_instead(
    server: AuthServer,
) -> None:
    async with server.client("alice") as alice:
        _, secret_layer = await push_image(alice, "private/app", "v1")
    digest = sha256(secret_layer)
    async with server.client("carol") as carol:
        resp = await carol.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "private/app"})
        assert resp.status_code == 202, resp.text
        assert "/v2/dst/blobs/uploads/" in resp.headers["Location"]
        resp = await carol.post("/v2/dst/blobs/uploads/", params={"mount": digest})  # automatic mount
        assert resp.status_code == 202, resp.text
        resp = await carol.post(
            "/v2/dst/blobs/uploads/", params=[("mount", digest), ("from", "a"), ("from", "private/app")]
        )
        assert resp.status_code == 202, resp.text
    assert not server.store.repo_has_blob("dst", parse_digest(digest))
    async with server.client("alice") as alice:
        resp = await alice.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "private/app"})
        assert resp.status_code == 201, resp.text
    assert server.store.repo_has_blob("dst", parse_digest(digest))


async def test_mount_from_a_pullable_repository_mounts(server: AuthServer) -> None:
    async with server.client("carol") as carol:
        assert (await push_blob(carol, "a", b"shared")).status_code == 201
        resp = await carol.post("/v2/dst/blobs/uploads/", params={"mount": sha256(b"shared"), "from": "a"})
        assert resp.status_code == 201, resp.text


async def test_unauthorized_upload_body_is_read_away_and_server_keeps_serving(server: AuthServer) -> None:
    data = os.urandom(8 * 1024 * 1024)
    async with server.client() as anonymous:
        resp = await push_blob(anonymous, "team/app", data)
        assert_oci_error(resp, 401, "UNAUTHORIZED")
    async with server.client("bob") as bob:
        assert_oci_error(await push_blob(bob, "team/app", data), 403, "DENIED")
        assert (await bob.get("/v2/")).status_code == 200
    assert server.store.blob_info(parse_digest(sha256(data))) is None


async def test_users_added_to_htpasswd_can_log_in_without_restart(server: AuthServer) -> None:
    assert server.settings.htpasswd is not None
    async with server.client("eve") as eve:
        assert (await eve.get("/v2/")).status_code == 401
        write_htpasswd(server.settings.htpasswd, PASSWORDS)
        stat = server.settings.htpasswd.stat()
        os.utime(server.settings.htpasswd, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        assert (await eve.get("/v2/")).status_code == 200
        assert_oci_error(await eve.get("/v2/team/app/tags/list"), 403, "DENIED")  # no rule for eve


async def test_anonymous_pull_lets_anonymous_pull_and_nothing_else(tmp_path: Path) -> None:
    settings = auth_settings(
        htpasswd=write_htpasswd(tmp_path / "htpasswd", {"alice": PASSWORDS["alice"]}), anonymous_pull=True
    )
    async with running_auth_registry(tmp_path / "data", settings) as srv:
        async with srv.client("alice") as alice:
            digest, layer = await push_image(alice, "any/app", "v1")
        async with srv.client() as anonymous:
            assert_oci_error(await anonymous.get("/v2/"), 401, "UNAUTHORIZED")
            assert (await anonymous.get("/v2/any/app/manifests/v1")).status_code == 200
            assert (await anonymous.get(f"/v2/any/app/blobs/{sha256(layer)}")).content == layer
            assert_oci_error(await push_blob(anonymous, "any/app", b"x"), 401, "UNAUTHORIZED")
            assert_oci_error(await anonymous.delete(f"/v2/any/app/manifests/{digest}"), 401, "UNAUTHORIZED")
            assert_oci_error(await anonymous.get("/v2/_catalog"), 401, "UNAUTHORIZED")


async def test_empty_basic_credentials_are_anonymous_as_podman_and_skopeo_send_them(tmp_path: Path) -> None:
    settings = auth_settings(
        htpasswd=write_htpasswd(tmp_path / "htpasswd", {"alice": PASSWORDS["alice"]}), anonymous_pull=True
    )
    empty = {"Authorization": "Basic Og=="}
    async with running_auth_registry(tmp_path / "data", settings) as srv:
        async with srv.client("alice") as alice:
            await push_image(alice, "any/app", "v1")
        async with srv.client() as client:
            assert (await client.get("/v2/any/app/manifests/v1", headers=empty)).status_code == 200
            refused = await client.put("/v2/any/app/manifests/v2", headers=empty, content=b"{}")
            assert_oci_error(refused, 401, "UNAUTHORIZED")
            assert refused.json()["errors"][0]["message"] == "authentication required"
            assert refused.headers["WWW-Authenticate"] == 'Basic realm="ipfsreg"'


async def test_malformed_basic_credentials_get_a_401_saying_what_is_wrong(server: AuthServer) -> None:
    async with server.client() as client:
        resp = await client.get(
            "/v2/", headers={"Authorization": "Basic " + base64.b64encode(b"alice").decode()}
        )
    assert_oci_error(resp, 401, "UNAUTHORIZED")
    assert (
        resp.json()["errors"][0]["message"] == "malformed Basic credentials: no ':' between user and password"
    )


def test_access_rules_without_any_authentication_are_a_startup_error() -> None:
    with pytest.raises(AuthConfigError):
        auth_app(object(), auth_settings(access=["alice:*:pull"]))
    with pytest.raises(AuthConfigError):
        auth_app(object(), auth_settings(anonymous_pull=True))
    app = object()
    assert auth_app(app, auth_settings()) is app


async def test_upload_session_of_another_repository_cannot_be_continued(server: AuthServer) -> None:
    async with server.client("alice") as alice:
        started = await alice.post("/v2/private/app/blobs/uploads/")
        assert started.status_code == 202
    session_path = started.headers["Location"].split("?")[0]
    upload_id = session_path.rsplit("/", 1)[1]
    async with server.client("carol") as carol:
        assert_oci_error(await carol.patch(session_path, content=b"evil"), 403, "DENIED")
        hijack = await carol.patch(f"/v2/dst/blobs/uploads/{upload_id}", content=b"evil")
        assert_oci_error(hijack, 404, "BLOB_UPLOAD_UNKNOWN")
    async with server.client("alice") as alice:
        before = started.headers["Range"]
        status = await alice.get(session_path)
        assert status.status_code == 204
        assert status.headers["Range"] == before  # carol's bytes never reached the session


async def test_observed_app_outside_auth_serves_health_and_metrics_and_counts_denials(tmp_path: Path) -> None:
    """The stacking the server uses: ObservedApp(AuthApp(registry))."""
    settings = auth_settings(htpasswd=write_htpasswd(tmp_path / "htpasswd", {"alice": PASSWORDS["alice"]}))
    datastore = Datastore.open(tmp_path / "data")
    try:
        app = ObservedApp(
            auth_app(create_app(datastore, settings), settings), Metrics(datastore), lambda: None
        )
        async with trio.open_nursery() as nursery:
            url = (await nursery.start(serve_registry, app, settings))[0]
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/v2/")).status_code == 401
                assert (await client.get("/v2/", auth=("alice", PASSWORDS["alice"]))).status_code == 200
                metrics = (await client.get("/metrics")).text
            nursery.cancel_scope.cancel()
    finally:
        datastore.close()
    assert 'ipfsreg_http_requests_total{method="GET",route="base",status="401"} 1.0' in metrics
    assert 'ipfsreg_http_requests_total{method="GET",route="base",status="200"} 1.0' in metrics


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"access": ["alice:*:fly"]}, "unknown action"),
        ({"access": ["anonymous:*:push"]}, "anonymous"),
        ({"htpasswd": Path("/nonexistent/htpasswd")}, "htpasswd"),
        ({"token_key": Path("/nonexistent/key.pem")}, "needs registry.htpasswd"),
        ({"token_rootcertbundle": Path("/nonexistent/bundle.pem")}, "bundle"),
    ],
)
def test_unusable_auth_configuration_is_a_startup_error(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {"htpasswd": write_htpasswd(tmp_path / "htpasswd", {"alice": "a"})}
    if "token_key" in overrides or "token_rootcertbundle" in overrides:
        base = {}
    with pytest.raises(AuthConfigError, match=message):
        auth_app(object(), auth_settings(**{**base, **overrides}))


def test_md5_htpasswd_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n")
    with pytest.raises(AuthConfigError, match="bcrypt"):
        auth_app(object(), auth_settings(htpasswd=path))

"""Docker token auth end to end over HTTP: challenge, /auth/token, JWT use, insufficient scope,
an external issuer's certificate bundle; and TLS on the registry port."""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from auth_support import (
    PASSWORDS,
    AuthServer,
    DockerTokenAuth,
    auth_settings,
    parse_challenge,
    running_auth_registry,
    ssl_context_for,
    write_htpasswd,
    write_private_key,
    write_self_signed,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ipfsreg.auth.token import load_private_key

RULES = ["alice:*:*", "alice:registry:catalog:*", "bob:team/*:pull", "anonymous:public/*:pull"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthServer]:
    settings = auth_settings(
        htpasswd=write_htpasswd(tmp_path / "htpasswd", PASSWORDS),
        access=RULES,
        token_key=write_private_key(tmp_path / "token.pem", "ec"),
        token_service="ipfsreg-test",
        token_issuer="ipfsreg-test-issuer",
    )
    async with running_auth_registry(tmp_path / "data", settings) as srv:
        yield srv


async def fetch_token(
    server: AuthServer, user: str | None, *scopes: str, password: str | None = None
) -> httpx.Response:
    params: list[tuple[str, str]] = [("service", "ipfsreg-test")] + [("scope", s) for s in scopes]
    async with server.client(user, password) as client:
        return await client.get("/auth/token", params=params)


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def test_base_without_token_returns_bearer_challenge_naming_realm_and_service(
    server: AuthServer,
) -> None:
    async with server.client() as client:
        resp = await client.get("/v2/")
    assert resp.status_code == 401
    assert resp.json()["errors"][0]["code"] == "UNAUTHORIZED"
    scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params == {"realm": server.url + "/auth/token", "service": "ipfsreg-test"}


async def test_challenge_scope_names_the_repository_and_actions(server: AuthServer) -> None:
    async with server.client() as client:
        pull = await client.get("/v2/team/app/manifests/v1")
        push = await client.post(
            "/v2/team/app/blobs/uploads/", params={"mount": sha256(b"x"), "from": "lib/x"}
        )
        catalog = await client.get("/v2/_catalog")
    assert parse_challenge(pull.headers["WWW-Authenticate"])[1]["scope"] == "repository:team/app:pull"
    assert (
        parse_challenge(push.headers["WWW-Authenticate"])[1]["scope"]
        == "repository:team/app:pull,push repository:lib/x:pull"
    )
    assert parse_challenge(catalog.headers["WWW-Authenticate"])[1]["scope"] == "registry:catalog:*"


async def test_token_endpoint_grants_the_intersection_of_requested_and_allowed(server: AuthServer) -> None:
    resp = await fetch_token(server, "bob", "repository:team/app:pull,push,delete", "repository:other:pull")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["token"] == doc["access_token"]
    assert doc["expires_in"] == 300
    assert doc["issued_at"].endswith("Z")
    claims = claims_of(doc["token"])
    assert claims["sub"] == "bob"
    assert claims["aud"] == "ipfsreg-test" and claims["iss"] == "ipfsreg-test-issuer"
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]


async def test_token_endpoint_refuses_wrong_password_and_unknown_service(server: AuthServer) -> None:
    resp = await fetch_token(server, "alice", "repository:a:pull", password="wrong")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")
    async with server.client("alice") as client:
        other = await client.get("/auth/token", params={"service": "elsewhere", "scope": "repository:a:pull"})
        assert other.status_code == 400
        mismatch = await client.get("/auth/token", params={"account": "bob", "scope": "repository:a:pull"})
        assert mismatch.status_code == 400


async def test_anonymous_token_carries_only_anonymous_rights(server: AuthServer) -> None:
    resp = await fetch_token(server, None, "repository:public/app:pull,push", "repository:team/app:pull")
    assert resp.status_code == 200
    claims = claims_of(resp.json()["token"])
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "public/app", "actions": ["pull"]}]


async def test_push_and_pull_through_the_token_flow(server: AuthServer) -> None:
    layer = b"layer bytes" * 100
    alice_auth = DockerTokenAuth("alice")
    async with httpx.AsyncClient(base_url=server.url, auth=alice_auth, timeout=60) as alice:
        resp = await alice.post(
            "/v2/team/app/blobs/uploads/", params={"digest": sha256(layer)}, content=layer
        )
        assert resp.status_code == 201, resp.text
        assert (await alice.get("/v2/_catalog")).json() == {"repositories": ["team/app"]}
    async with httpx.AsyncClient(base_url=server.url, auth=DockerTokenAuth("bob"), timeout=60) as bob:
        assert (await bob.get(f"/v2/team/app/blobs/{sha256(layer)}")).content == layer
        denied = await bob.post("/v2/team/app/blobs/uploads/", params={"digest": sha256(b"b")}, content=b"b")
        assert denied.status_code == 401
        assert denied.json()["errors"][0]["code"] == "UNAUTHORIZED"
        _, params = parse_challenge(denied.headers["WWW-Authenticate"])
        assert params["error"] == "insufficient_scope"
        assert params["scope"] == "repository:team/app:pull,push"
        message = denied.json()["errors"][0]["message"]
        assert message == "insufficient scope: the token does not grant repository:team/app:pull,push"
        assert_not_stored = server.store.blob_info
        from ipfsreg.registry.digests import parse_digest

        assert assert_not_stored(parse_digest(sha256(b"b"))) is None


async def test_token_for_one_repository_does_not_open_another(server: AuthServer) -> None:
    token = (await fetch_token(server, "alice", "repository:team/app:pull,push")).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with server.client() as client:
        assert (
            await client.get("/v2/team/app/tags/list", headers=headers)
        ).status_code == 404  # allowed, empty
        for path in ("/v2/team/app2/tags/list", "/v2/team/app/sub/tags/list", "/v2/_catalog"):
            resp = await client.get(path, headers=headers)
            assert resp.status_code == 401, path
            assert parse_challenge(resp.headers["WWW-Authenticate"])[1]["error"] == "insufficient_scope"
        resp = await client.delete(f"/v2/team/app/manifests/{sha256(b'x')}", headers=headers)
        assert resp.status_code == 401


async def test_invalid_tokens_are_refused_with_invalid_token(server: AuthServer, tmp_path: Path) -> None:
    foreign = load_private_key(write_private_key(tmp_path / "foreign.pem", "ec"))
    now = int(time.time())
    claims = {
        "iss": "ipfsreg-test-issuer",
        "aud": "ipfsreg-test",
        "exp": now + 60,
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    }
    forged = jwt.encode(claims, foreign, algorithm="ES256")
    async with server.client() as client:
        for token in (forged, "not-a-jwt", "a.b.c"):
            resp = await client.get("/v2/team/app/tags/list", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401
            _, params = parse_challenge(resp.headers["WWW-Authenticate"])
            assert params["error"] == "invalid_token"
        basic = await client.get("/v2/", auth=httpx.BasicAuth("alice", PASSWORDS["alice"]))
        assert basic.status_code == 401  # a token registry wants a token, not a password
        assert basic.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_external_issuer_tokens_verify_against_the_certificate_bundle(tmp_path: Path) -> None:
    key = load_private_key(write_private_key(tmp_path / "issuer.pem", "rsa"))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token issuer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(key, hashes.SHA256())
    )
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    settings = auth_settings(
        token_rootcertbundle=bundle,
        token_realm="https://auth.example/token",
        token_service="reg",
        token_issuer="ext",
    )
    claims = {
        "iss": "ext",
        "aud": "reg",
        "exp": int(time.time()) + 60,
        "access": [{"type": "repository", "name": "lib/app", "actions": ["pull"]}],
    }
    token = jwt.encode(claims, key, algorithm="RS256")
    async with running_auth_registry(tmp_path / "data", settings) as srv, srv.client() as client:
        resp = await client.get("/v2/lib/app/tags/list")
        _, params = parse_challenge(resp.headers["WWW-Authenticate"])
        assert params["realm"] == "https://auth.example/token" and params["service"] == "reg"
        ok = await client.get("/v2/lib/app/tags/list", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 404 and ok.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        no_issuer = await client.get("/auth/token")  # no built-in issuer without a key: an unknown path
        assert no_issuer.status_code == 401 and "token" not in no_issuer.json()


async def test_tls_registry_port_serves_https_with_auth(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    settings = auth_settings(
        htpasswd=write_htpasswd(tmp_path / "htpasswd", {"alice": PASSWORDS["alice"]}),
        tls_cert=cert,
        tls_key=key,
    )
    async with running_auth_registry(tmp_path / "data", settings) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        async with srv.client("alice", verify=ssl_context_for(cert)) as client:
            assert (await client.get("/v2/")).status_code == 200
        async with srv.client("alice", verify=True) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/v2/")
        plain = srv.url.replace("https://", "http://")
        async with httpx.AsyncClient(timeout=10) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(plain + "/v2/")


def test_tls_cert_without_key_is_refused(tmp_path: Path) -> None:
    from ipfsreg.registry.app import hypercorn_config

    cert, _ = write_self_signed(tmp_path)
    with pytest.raises(ValueError, match="together"):
        hypercorn_config(auth_settings(tls_cert=cert))


async def test_oauth2_password_grant_issues_the_same_cut_down_token(server: AuthServer) -> None:
    form = {
        "grant_type": "password",
        "username": "bob",
        "password": PASSWORDS["bob"],
        "service": "ipfsreg-test",
        "scope": "repository:team/app:pull,push repository:other:pull",
        "client_id": "test",
    }
    async with server.client() as client:
        resp = await client.post("/auth/token", data=form)
        assert resp.status_code == 200, resp.text
        assert resp.json()["scope"] == "repository:team/app:pull"
        assert claims_of(resp.json()["access_token"])["access"] == [
            {"type": "repository", "name": "team/app", "actions": ["pull"]}
        ]
        wrong = await client.post("/auth/token", data={**form, "password": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_grant"
        refresh = await client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
        assert refresh.status_code == 400 and refresh.json()["error"] == "unsupported_grant_type"
        huge = await client.post("/auth/token", data={**form, "scope": "repository:a:pull " * 10000})
        assert huge.status_code == 413
        not_form = await client.post("/auth/token", json=form)
        assert not_form.status_code == 400

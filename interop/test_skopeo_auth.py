"""Interop with skopeo (Debian) against an authenticating registry: Basic (htpasswd) and Docker token
auth with ``--creds``, a wrong password, a pull-only user who cannot push or delete, and TLS."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trio

from interop.oci_images import layout_blobs, write_single_image
from interop.registry_fixtures import policy_file, skopeo, skopeo_status
from ipfsreg.auth import auth_app
from ipfsreg.blockstore import Datastore
from ipfsreg.registry.app import create_app, serve_registry
from ipfsreg.registry.settings import RegistrySettings
from tests.auth.auth_support import write_private_key, write_self_signed

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
RULES = ["alice:*:*", "bob:team/*:pull"]


@pytest.fixture(autouse=True)
def _require_skopeo() -> None:
    # Interop tests never skip: a missing client is a failure.
    assert shutil.which("skopeo"), "skopeo is not installed (Debian package 'skopeo')"


@pytest.fixture(autouse=True)
def _no_stored_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only --creds may authenticate: no auth file of the machine's user takes part.
    auth_file = tmp_path / "auth.json"
    auth_file.write_text('{"auths": {}}')
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))


def _settings(tmp_path: Path, **overrides: Any) -> RegistrySettings:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        "".join(
            f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in USERS.items()
        )
    )
    return replace(RegistrySettings(listen="127.0.0.1:0"), htpasswd=htpasswd, access=RULES, **overrides)


@asynccontextmanager
async def auth_registry(tmp_path: Path, settings: RegistrySettings) -> AsyncIterator[str]:
    """Serve the registry behind AuthApp on loopback; yields host:port."""
    datastore = Datastore.open(tmp_path / "data")
    try:
        app = auth_app(create_app(datastore, settings), settings)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_registry, app, settings)
            yield binds[0].split("://", 1)[1]
            nursery.cancel_scope.cancel()
    finally:
        datastore.close()


def creds(user: str, password: str | None = None) -> str:
    return f"{user}:{password if password is not None else USERS[user]}"


async def _exercise(
    tmp_path: Path, host: str, tls: list[str], dest_tls: list[str], src_tls: list[str]
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_single_image(src, "v1")
    policy = policy_file(tmp_path)
    ref = f"docker://{host}/team/app:v1"

    # no credentials, and a wrong password: skopeo fails and says why
    anonymous = await skopeo_status("copy", *dest_tls, f"oci:{src}:v1", ref, policy=policy)
    assert anonymous.returncode != 0
    assert b"401" in anonymous.stderr or b"unauthorized" in anonymous.stderr
    wrong = await skopeo_status(
        "copy", *dest_tls, "--dest-creds", creds("alice", "nope"), f"oci:{src}:v1", ref, policy=policy
    )
    assert wrong.returncode != 0
    assert b"unauthorized" in wrong.stderr.lower() or b"authentication" in wrong.stderr.lower()

    # alice may push; bob may pull but neither push nor delete
    await skopeo("copy", *dest_tls, "--dest-creds", creds("alice"), f"oci:{src}:v1", ref, policy=policy)
    await skopeo("copy", *src_tls, "--src-creds", creds("bob"), ref, f"oci:{dst}:v1", policy=policy)
    assert layout_blobs(dst) == layout_blobs(src)
    tags = await skopeo(
        "list-tags", *tls, "--creds", creds("bob"), f"docker://{host}/team/app", policy=policy
    )
    assert json.loads(tags.stdout)["Tags"] == ["v1"]
    push = await skopeo_status(
        "copy",
        *dest_tls,
        "--dest-creds",
        creds("bob"),
        f"oci:{src}:v1",
        f"docker://{host}/team/app:bob",
        policy=policy,
    )
    assert push.returncode != 0 and b"denied" in push.stderr
    delete = await skopeo_status("delete", *tls, "--creds", creds("bob"), ref, policy=policy)
    assert delete.returncode != 0
    assert (
        b"(403" in delete.stderr or b"(401" in delete.stderr
    )  # DENIED (basic) or insufficient scope (token)
    outside = await skopeo_status(
        "inspect", *tls, "--creds", creds("bob"), f"docker://{host}/other/app:v1", policy=policy
    )
    assert outside.returncode != 0 and b"denied" in outside.stderr
    still = await skopeo("inspect", *tls, "--creds", creds("bob"), ref, policy=policy)
    assert json.loads(still.stdout)["Architecture"] == "amd64"
    await skopeo("delete", *tls, "--creds", creds("alice"), ref, policy=policy)
    gone = await skopeo_status("inspect", *tls, "--creds", creds("alice"), ref, policy=policy)
    assert gone.returncode != 0


PLAIN_TLS = (["--tls-verify=false"], ["--dest-tls-verify=false"], ["--src-tls-verify=false"])


async def test_skopeo_creds_with_basic_auth(tmp_path: Path) -> None:
    async with auth_registry(tmp_path, _settings(tmp_path)) as host:
        await _exercise(tmp_path, host, *PLAIN_TLS)


async def test_skopeo_creds_with_token_auth(tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "token-key.pem")
    async with auth_registry(tmp_path, _settings(tmp_path, token_key=key)) as host:
        await _exercise(tmp_path, host, *PLAIN_TLS)


async def test_skopeo_over_tls_with_cert_dir_and_token_auth(tmp_path: Path) -> None:
    cert, tls_key = write_self_signed(tmp_path)
    certs = tmp_path / "certs.d"  # skopeo trusts the *.crt files of a cert dir
    certs.mkdir()
    shutil.copyfile(cert, certs / "ca.crt")
    token_key = write_private_key(tmp_path / "token-key.pem")
    settings = _settings(tmp_path, tls_cert=cert, tls_key=tls_key, token_key=token_key)
    async with auth_registry(tmp_path, settings) as host:
        # without the CA skopeo refuses the server's certificate
        untrusted = await skopeo_status(
            "inspect", "--creds", creds("alice"), f"docker://{host}/team/app:v1", policy=policy_file(tmp_path)
        )
        assert untrusted.returncode != 0 and b"certificate" in untrusted.stderr.lower()
        cert_dir = str(certs)
        await _exercise(
            tmp_path,
            host,
            ["--cert-dir", cert_dir],
            ["--dest-cert-dir", cert_dir],
            ["--src-cert-dir", cert_dir],
        )

"""htpasswd parsing and reloading, Basic header decoding, and JWT issue/verify."""

from __future__ import annotations

import base64
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from auth_support import write_htpasswd, write_private_key
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ipfsreg.auth import AuthConfigError, Htpasswd, HtpasswdUnavailable, InvalidToken, parse_htpasswd
from ipfsreg.auth.middleware import basic_credentials, bearer_token
from ipfsreg.auth.policy import CATALOG, PULL, PUSH, REPOSITORY, Access, Resource
from ipfsreg.auth.token import TokenIssuer, TokenVerifier, key_id, load_private_key, load_public_keys

BCRYPT = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()


# --- htpasswd -------------------------------------------------------------------------------------


def test_htpasswd_accepts_2y_and_2b_with_comments_and_blank_lines() -> None:
    text = f"# users\n\nalice:{BCRYPT}\nbob:$2y${BCRYPT[4:]}\n"
    assert set(parse_htpasswd(text)) == {"alice", "bob"}


@pytest.mark.parametrize(
    "entry",
    [
        "alice:$apr1$abc$0123456789012345678901",  # Apache MD5
        "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # SHA1
        "alice:rl4Gv.zJzgIjs",  # crypt
        "alice:plaintext",
        f"alice:$2a${BCRYPT[4:]}",
        f"alice:{BCRYPT[:-1]}",
        "alice",
        f":{BCRYPT}",
        f"anonymous:{BCRYPT}",
        f"*:{BCRYPT}",
    ],
)
def test_htpasswd_refuses_anything_but_bcrypt_with_the_line_number(entry: str) -> None:
    with pytest.raises(AuthConfigError, match=r"htpasswd:2"):
        parse_htpasswd(f"# header\n{entry}\n")


def test_htpasswd_refuses_duplicate_users() -> None:
    with pytest.raises(AuthConfigError, match="twice"):
        parse_htpasswd(f"alice:{BCRYPT}\nalice:{BCRYPT}\n")


def test_missing_htpasswd_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError):
        Htpasswd(tmp_path / "missing")


async def test_htpasswd_verifies_passwords(tmp_path: Path) -> None:
    users = Htpasswd(write_htpasswd(tmp_path / "htpasswd", {"alice": "right", "bob": "other"}))
    assert await users.verify("alice", "right")
    assert await users.verify("alice", "right")  # second time from the cache
    assert not await users.verify("alice", "wrong")
    assert not await users.verify("alice", "")
    assert not await users.verify("bob", "right")
    assert not await users.verify("nobody", "right")
    assert not await users.verify("alice", "x" * 100)  # longer than bcrypt's 72 bytes


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


async def test_htpasswd_reload_adds_and_removes_users_without_restart(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "a"})
    users = Htpasswd(path)
    assert await users.verify("alice", "a")
    write_htpasswd(path, {"bob": "b"})
    _touch_later(path)
    assert await users.verify("bob", "b")
    assert not await users.verify("alice", "a")  # removed, though alice's success was cached
    assert users.users == {"bob"}


async def test_htpasswd_changed_password_invalidates_the_old_one(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "old"})
    users = Htpasswd(path)
    assert await users.verify("alice", "old")
    write_htpasswd(path, {"alice": "new"})
    _touch_later(path)
    assert not await users.verify("alice", "old")
    assert await users.verify("alice", "new")


async def test_htpasswd_broken_after_startup_refuses_every_login(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "a"})
    users = Htpasswd(path)
    assert await users.verify("alice", "a")
    path.write_text("alice:$apr1$md5$hash\n")
    _touch_later(path)
    with pytest.raises(HtpasswdUnavailable):
        await users.verify("alice", "a")
    path.unlink()
    with pytest.raises(HtpasswdUnavailable):
        await users.verify("alice", "a")
    write_htpasswd(path, {"alice": "a"})
    assert await users.verify("alice", "a")


# --- Authorization headers -------------------------------------------------------------------------


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def test_basic_credentials_decode_user_and_password_with_colons() -> None:
    assert basic_credentials(_basic(b"alice:pa:ss")) == ("alice", "pa:ss")
    assert basic_credentials(_basic(b"alice:")) == ("alice", "")
    assert basic_credentials(_basic("jos\u00e9:p\u00e4ss".encode())) == ("jos\u00e9", "p\u00e4ss")
    assert basic_credentials("Bearer abc") is None


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("Basic !!!", "not base64"),
        ("Basic ", "nothing after 'Basic'"),
        (_basic(b"nocolon"), "no ':' between user and password"),
        (_basic(b":pw"), "a password without a user name"),
        (_basic(b"\xff:pw"), "not UTF-8"),
    ],
)
def test_malformed_basic_credentials_are_refused_saying_what_is_wrong(header: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        basic_credentials(header)


def test_empty_basic_credentials_decode_as_empty_user_and_password() -> None:
    # podman, skopeo and buildah send "Basic Og==" (":") after a Basic challenge: anonymous.
    assert basic_credentials("Basic Og==") == ("", "")


def test_bearer_token_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Bearer ") is None
    assert bearer_token("Basic abc") is None


# --- tokens ---------------------------------------------------------------------------------------

APP = Resource(REPOSITORY, "app")


def _pair(tmp_path: Path, kind: str) -> tuple[TokenIssuer, TokenVerifier]:
    key = load_private_key(write_private_key(tmp_path / f"{kind}.pem", kind))
    issuer = TokenIssuer(key, issuer="iss", service="svc", expiration=60)
    return issuer, TokenVerifier([key.public_key()], issuer="iss", service="svc")


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_token_round_trip_carries_subject_and_access(tmp_path: Path, kind: str) -> None:
    issuer, verifier = _pair(tmp_path, kind)
    access = [Access(APP, (PULL, PUSH)), Access(CATALOG, ("*",))]
    verified = verifier.verify(issuer.issue("alice", access).token)
    assert verified.subject == "alice"
    assert verified.access == tuple(access)
    assert verified.allows(APP, PUSH) and not verified.allows(APP, "delete")
    assert not verified.allows(Resource(REPOSITORY, "app/sub"), PULL)
    header = jwt.get_unverified_header(issuer.issue("alice", access).token)
    assert header["alg"] == ("ES256" if kind == "ec" else "RS256")
    assert header["kid"] == key_id(issuer.key)


def test_key_id_has_libtrust_shape(tmp_path: Path) -> None:
    kid = key_id(load_private_key(write_private_key(tmp_path / "k.pem")))
    groups = kid.split(":")
    assert len(groups) == 12
    assert all(len(g) == 4 and g.isalnum() and g == g.upper() for g in groups)


def test_token_from_another_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    issuer, _ = _pair(tmp_path / "a", "ec")
    _, other_verifier = _pair(tmp_path, "rsa")
    _, same_kind_verifier = _pair(tmp_path / "b", "ec")
    token = issuer.issue("alice", [Access(APP, (PULL,))]).token
    with pytest.raises(InvalidToken):
        other_verifier.verify(token)
    with pytest.raises(InvalidToken):
        same_kind_verifier.verify(token)


def test_expired_token_is_refused(tmp_path: Path) -> None:
    issuer, verifier = _pair(tmp_path, "ec")
    old = issuer.issue("alice", [Access(APP, (PULL,))], now=time.time() - 3600).token
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(old)


def test_token_for_another_service_or_issuer_is_refused(tmp_path: Path) -> None:
    issuer, _ = _pair(tmp_path, "ec")
    token = issuer.issue("alice", []).token
    public = [issuer.key.public_key()]
    with pytest.raises(InvalidToken):
        TokenVerifier(public, issuer="iss", service="other").verify(token)  # type: ignore[list-item]
    with pytest.raises(InvalidToken):
        TokenVerifier(public, issuer="other", service="svc").verify(token)  # type: ignore[list-item]


def test_unsigned_and_hmac_tokens_are_refused(tmp_path: Path) -> None:
    issuer, verifier = _pair(tmp_path, "rsa")
    claims = {"iss": "iss", "aud": "svc", "exp": int(time.time()) + 60, "access": [APP.__dict__]}
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(InvalidToken):
        verifier.verify(unsigned)
    # HS256 keyed with the public key's PEM: the classic algorithm-confusion forgery
    pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hand_made_jwt(
        {"alg": "HS256", "typ": "JWT"}, claims, lambda signing: hmac.digest(pem, signing, "sha256")
    )
    with pytest.raises(InvalidToken):
        verifier.verify(forged)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hand_made_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
    return signing.decode() + "." + _b64(sign(signing))


def test_token_with_malformed_access_claim_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier([key.public_key()], issuer="iss", service="svc")
    for access in ("all", [{"type": "repository", "name": "app", "actions": "pull"}], [["x"]]):
        claims = {"iss": "iss", "aud": "svc", "exp": int(time.time()) + 60, "access": access}
        with pytest.raises(InvalidToken):
            verifier.verify(jwt.encode(claims, key, algorithm="ES256"))


def test_weak_or_unsupported_keys_are_refused_at_startup(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    path = tmp_path / "weak.pem"
    path.write_bytes(
        weak.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(AuthConfigError, match="2048"):
        load_private_key(path)
    p384 = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        p384.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(AuthConfigError, match="P-256"):
        load_public_keys(path)
    path.write_text("not pem")
    with pytest.raises(AuthConfigError):
        load_public_keys(path)
    with pytest.raises(AuthConfigError):
        load_private_key(path)

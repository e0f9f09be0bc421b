"""The pure parts of the upstream auth flow: WWW-Authenticate grammar, token answers, error bodies."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfsreg.upstream.challenge import (
    DEFAULT_TOKEN_SECONDS,
    Challenge,
    ChallengeError,
    basic_credentials,
    error_message,
    parse_token_response,
    parse_www_authenticate,
    pick_challenge,
    repository_scope,
)
from ipfsreg.upstream.errors import UpstreamError


def test_docker_hub_bearer_challenge_parses_realm_service_scope() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert parse_www_authenticate(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/alpine:pull",
            },
        )
    ]


def test_basic_challenge_with_token_value_and_spaces() -> None:
    assert parse_www_authenticate('Basic  realm=fake , charset="UTF-8"') == [
        Challenge("basic", {"realm": "fake", "charset": "UTF-8"})
    ]


def test_several_challenges_in_one_header() -> None:
    challenges = parse_www_authenticate('Basic realm="a", Bearer realm="b",scope="x y"')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[1].params == {"realm": "b", "scope": "x y"}


def test_scheme_without_parameters_and_empty_list_elements() -> None:
    assert parse_www_authenticate(", Basic, ,Negotiate") == [Challenge("basic"), Challenge("negotiate")]


def test_token68_challenge() -> None:
    assert parse_www_authenticate("Negotiate abc+/==") == [Challenge("negotiate", {"": "abc+/=="})]


def test_quoted_string_escapes_and_commas() -> None:
    (challenge,) = parse_www_authenticate(r'Bearer realm="a\"b,c", error="invalid_token"')
    assert challenge.params == {"realm": 'a"b,c', "error": "invalid_token"}


def test_parameter_names_are_case_insensitive_and_first_value_wins() -> None:
    (challenge,) = parse_www_authenticate('BEARER Realm="one", realm="two"')
    assert challenge.scheme == "bearer"
    assert challenge.realm == "one"


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="unterminated',
        "Bearer realm=",
        '"quoted" realm=x',
        'Bearer realm="a" service="b"',
        "Bearer ;",
    ],
)
def test_malformed_challenges_raise_challenge_error(header: str) -> None:
    with pytest.raises(ChallengeError):
        parse_www_authenticate(header)


@given(st.text(max_size=80))
def test_any_header_parses_or_raises_challenge_error(header: str) -> None:
    try:
        challenges = parse_www_authenticate(header)
    except ChallengeError:
        return
    assert all(c.scheme == c.scheme.lower() for c in challenges)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        max_size=4,
    )
)
def test_quoted_parameters_round_trip(params: dict[str, str]) -> None:
    quoted = ", ".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in params.items()
    )
    header = f"Bearer {quoted}".rstrip()
    assert parse_www_authenticate(header) == [Challenge("bearer", params)]


def test_pick_challenge_prefers_bearer_and_ignores_unknown_schemes() -> None:
    basic, bearer, other = Challenge("basic"), Challenge("bearer", {"realm": "r"}), Challenge("negotiate")
    assert pick_challenge([basic, bearer]) is bearer
    assert pick_challenge([other, basic]) is basic
    assert pick_challenge([other]) is None


def test_repository_scope_and_basic_credentials() -> None:
    assert repository_scope("library/alpine") == "repository:library/alpine:pull"
    assert repository_scope("a/b", ("pull", "push")) == "repository:a/b:pull,push"
    value = basic_credentials("alice", "pa:ss")
    assert value.startswith("Basic ")
    assert base64.b64decode(value[6:]) == b"alice:pa:ss"


def test_token_response_with_token_or_access_token_and_expiry() -> None:
    token = parse_token_response(json.dumps({"token": "t1", "expires_in": 300}).encode(), now=1000.0)
    assert (token.value, token.expires_at) == ("t1", 1300.0)
    assert token.valid(1200.0) and not token.valid(1299.0)
    oauth = parse_token_response(json.dumps({"access_token": "t2"}).encode(), now=0.0)
    assert (oauth.value, oauth.expires_at) == ("t2", float(DEFAULT_TOKEN_SECONDS))
    odd = parse_token_response(json.dumps({"token": "t3", "expires_in": "soon"}).encode(), now=0.0)
    assert odd.expires_at == DEFAULT_TOKEN_SECONDS


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"token": ""}', b'{"token": 5}'])
def test_unusable_token_responses_raise(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        parse_token_response(body, now=0.0)


def test_error_message_of_oci_error_bodies() -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": "no", "detail": {"a": 1}}]}).encode()
    assert error_message(body, 403) == ("DENIED", 'DENIED: no ({"a": 1})')
    assert error_message(b'{"details": "bad creds"}', 401) == (None, "bad creds")
    assert error_message(b"plain text", 500) == (None, "plain text")
    assert error_message(b"", 502) == (None, "HTTP 502")

"""Access rules, scopes and request->access mapping (pure): every rule shape, no escalation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfsreg.auth.policy import (
    ALL,
    ANONYMOUS_PRINCIPAL,
    CATALOG,
    DELETE,
    GATEWAY,
    PULL,
    PUSH,
    REPOSITORY,
    Access,
    AuthConfigError,
    Need,
    Policy,
    Principal,
    Resource,
    is_mount,
    need_for,
    parse_rule,
    parse_scope,
    parse_scopes,
    without_mount,
)

ALICE, BOB, CAROL = Principal("alice"), Principal("bob"), Principal("carol")
ACTIONS = (PULL, PUSH, DELETE)


def repo(name: str) -> Resource:
    return Resource(REPOSITORY, name)


def policy(*rules: str, anonymous_pull: bool = False) -> Policy:
    return Policy.from_settings(list(rules), anonymous_pull=anonymous_pull)


# --- rule parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "alice",
        "alice:pull",
        ":team/*:pull",
        "alice:team/*:",
        "alice:team/*:pull,fly",
        "alice:Team/*:pull",
        "alice:team/[ab]:pull",
        "alice:team/?:pull",
        "alice:registry:catalog:pull",
        "alice:registry:gateway:push",
        "alice:registry:other:*",
        "anonymous:*:push",
        "anonymous:public/*:pull,delete",
        "anonymous:*:*",
        "al ice:*:pull",
    ],
)
def test_malformed_or_unsafe_rule_is_refused_at_startup(text: str) -> None:
    with pytest.raises(AuthConfigError):
        parse_rule(text)


def test_anonymous_may_be_granted_catalog_and_gateway_and_pull() -> None:
    p = policy("anonymous:public/*:pull", "anonymous:registry:catalog:*", "anonymous:registry:gateway:*")
    assert p.actions(ANONYMOUS_PRINCIPAL, repo("public/app")) == {PULL}
    assert p.allows(ANONYMOUS_PRINCIPAL, CATALOG, ALL)
    assert p.allows(ANONYMOUS_PRINCIPAL, GATEWAY, PULL)


# --- every action x every rule shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "name", "granted"),
    [
        ("alice:app:pull", "app", {PULL}),
        ("alice:app:push", "app", {PUSH}),
        ("alice:app:delete", "app", {DELETE}),
        ("alice:app:pull,push", "app", {PULL, PUSH}),
        ("alice:app:*", "app", {PULL, PUSH, DELETE}),
        ("alice:*:pull", "anything/at/all", {PULL}),
        ("alice:team/*:push", "team/app", {PUSH}),
        ("alice:team/*:push", "team/a/b", {PUSH}),
        ("alice:team/*:push", "team", set()),
        ("alice:team/*:push", "teamx/app", set()),
        ("alice:team/*:push", "other/team/app", set()),
        ("alice:*/app:pull", "team/app", {PULL}),
        ("alice:*/app:pull", "team/app2", set()),
        ("alice:a:pull,push", "a/b", set()),
        ("alice:a:pull,push", "b/a", set()),
        ("alice:a:pull,push", "ab", set()),
        ("alice:a.b:pull", "axb", set()),
        ("*:shared/*:pull", "shared/x", {PULL}),
    ],
)
def test_rule_grants_exactly_its_actions_on_matching_names(rule: str, name: str, granted: set[str]) -> None:
    p = policy(rule)
    assert p.actions(ALICE, repo(name)) == granted
    for action in ACTIONS:
        assert p.allows(ALICE, repo(name), action) == (action in granted)


def test_user_rule_applies_to_that_user_only_and_star_to_every_authenticated_user() -> None:
    p = policy("alice:app:push", "*:app:pull")
    assert p.actions(ALICE, repo("app")) == {PULL, PUSH}
    assert p.actions(BOB, repo("app")) == {PULL}
    assert p.actions(ANONYMOUS_PRINCIPAL, repo("app")) == set()


def test_user_names_are_case_sensitive() -> None:
    assert policy("alice:*:*").actions(Principal("Alice"), repo("app")) == set()


@pytest.mark.parametrize(
    "name",
    [
        "Team/app",
        "team/../admin",
        "../admin",
        "team/./app",
        "team//app",
        "/team/app",
        "team/app/",
        "a" * 256,
        "",
    ],
)
def test_invalid_repository_names_get_no_rights_even_from_star(name: str) -> None:
    p = policy("alice:*:*")
    assert p.actions(ALICE, repo(name)) == set()


def test_globs_never_grant_registry_resources() -> None:
    p = policy("alice:*:*")
    assert not p.allows(ALICE, CATALOG, ALL)
    assert not p.allows(ALICE, GATEWAY, PULL)
    assert p.actions(ALICE, repo("registry")) == {PULL, PUSH, DELETE}  # a repository named "registry"


def test_registry_targets_grant_only_their_own_resource() -> None:
    p = policy("alice:registry:catalog:*", "bob:registry:gateway:pull")
    assert p.allows(ALICE, CATALOG, ALL) and not p.allows(ALICE, GATEWAY, PULL)
    assert p.allows(BOB, GATEWAY, PULL) and not p.allows(BOB, CATALOG, ALL)
    assert p.actions(ALICE, repo("catalog")) == set()
    assert p.actions(ALICE, Resource("registry", "unknown")) == set()
    assert p.actions(ALICE, Resource("plugin", "app")) == set()


def test_no_rules_means_every_authenticated_user_may_do_anything_but_anonymous_nothing() -> None:
    p = policy()
    assert p.actions(CAROL, repo("x/y")) == {PULL, PUSH, DELETE}
    assert p.allows(CAROL, CATALOG, ALL) and p.allows(CAROL, GATEWAY, PULL)
    assert p.actions(ANONYMOUS_PRINCIPAL, repo("x/y")) == set()


def test_anonymous_pull_grants_anonymous_pull_only() -> None:
    p = policy("alice:team/*:pull", anonymous_pull=True)
    assert p.actions(ANONYMOUS_PRINCIPAL, repo("any/thing")) == {PULL}
    assert p.allows(ANONYMOUS_PRINCIPAL, GATEWAY, PULL)
    assert not p.allows(ANONYMOUS_PRINCIPAL, CATALOG, ALL)
    # an authenticated user is not anonymous: bob gets only what rules give bob
    assert p.actions(BOB, repo("any/thing")) == set()


# --- token grants: the intersection of requested and allowed ---------------------------------------


def test_token_grant_cuts_requested_scope_down_to_allowed() -> None:
    p = policy("bob:team/*:pull")
    requested = parse_scopes(["repository:team/app:pull,push"])
    assert p.grant(BOB, requested) == [Access(repo("team/app"), (PULL,))]


def test_token_grant_drops_unallowed_resources_and_unknown_actions() -> None:
    p = policy("bob:team/*:pull")
    requested = parse_scopes(["repository:other:pull repository:team/a:fly,pull registry:catalog:*"])
    assert p.grant(BOB, requested) == [Access(repo("team/a"), (PULL,))]


def test_token_grant_star_expands_to_allowed_actions_only() -> None:
    p = policy("alice:app:pull,delete")
    assert p.grant(ALICE, parse_scopes(["repository:app:*"])) == [Access(repo("app"), (PULL, DELETE))]


def test_token_grant_merges_repeated_scopes_for_one_resource() -> None:
    p = policy("alice:app:*")
    got = p.grant(ALICE, parse_scopes(["repository:app:pull", "repository:app:push,pull"]))
    assert got == [Access(repo("app"), (PULL, PUSH))]


def test_token_grant_for_catalog_needs_the_catalog_rule() -> None:
    requested = parse_scopes(["registry:catalog:*"])
    assert policy("alice:*:*").grant(ALICE, requested) == []
    assert policy("alice:registry:catalog:*").grant(ALICE, requested) == [Access(CATALOG, (ALL,))]


@given(
    rules=st.lists(
        st.tuples(
            st.sampled_from(["alice", "bob", "*", "anonymous"]),
            st.sampled_from(["*", "a", "a/*", "a/b", "b/*", "*/c", "registry:catalog", "registry:gateway"]),
            st.sets(st.sampled_from(["pull", "push", "delete", "*"]), min_size=1),
        ),
        max_size=5,
    ),
    user=st.sampled_from(["alice", "bob", "carol", ""]),
    requested=st.lists(
        st.tuples(
            st.sampled_from(["repository", "registry", "plugin"]),
            st.sampled_from(["a", "a/b", "a/b/c", "b", "x/c", "A", "a/../b", "catalog", "gateway"]),
            st.sets(st.sampled_from(["pull", "push", "delete", "*", "admin"]), min_size=1),
        ),
        max_size=6,
    ),
)
def test_token_grant_never_exceeds_policy_or_request(
    rules: list[tuple[str, str, set[str]]], user: str, requested: list[tuple[str, str, set[str]]]
) -> None:
    texts = []
    for who, target, actions in rules:
        text = f"{who}:{target}:{','.join(sorted(actions))}"
        try:
            parse_rule(text)
        except AuthConfigError:
            continue
        texts.append(text)
    p = Policy([parse_rule(t) for t in texts])
    principal = Principal(user)
    access = [Access(Resource(t, n), tuple(sorted(a))) for t, n, a in requested]
    for granted in p.grant(principal, access):
        asked = {a for acc in access if acc.resource == granted.resource for a in acc.actions}
        for action in granted.actions:
            assert p.allows(principal, granted.resource, action)
            assert action in asked or ("*" in asked and granted.resource.type == "repository")


# --- scopes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repository:team/app:pull,push", Access(repo("team/app"), (PULL, PUSH))),
        ("repository:app:pull,pull", Access(repo("app"), (PULL,))),
        ("registry:catalog:*", Access(CATALOG, (ALL,))),
        ("repository:localhost:5000/app:pull", Access(repo("localhost:5000/app"), (PULL,))),
        ("repository(plugin):app:pull", None),
        ("repository::pull", None),
        ("repository:app:", None),
        ("repository:app", None),
        (":app:pull", None),
        ("", None),
    ],
)
def test_parse_scope(text: str, expected: Access | None) -> None:
    assert parse_scope(text) == expected


def test_scope_round_trips() -> None:
    access = Access(repo("a/b"), (PULL, PUSH))
    assert parse_scope(access.scope()) == access


# --- what each request needs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("GET", "/v2/", Need("login")),
        ("GET", "/v2", Need("login")),
        ("GET", "/", Need("login")),
        ("GET", "/v2/nonsense", Need("login")),
        ("GET", "/v2/_catalog", Need("access", CATALOG, ALL)),
        ("GET", "/ipfs/bafy/x", Need("access", GATEWAY, PULL)),
        ("GET", "/v2/a/b/manifests/v1", Need("access", repo("a/b"), PULL)),
        ("HEAD", "/v2/a/b/manifests/v1", Need("access", repo("a/b"), PULL)),
        ("PUT", "/v2/a/b/manifests/v1", Need("access", repo("a/b"), PUSH)),
        ("DELETE", "/v2/a/b/manifests/v1", Need("access", repo("a/b"), DELETE)),
        ("GET", "/v2/a/tags/list", Need("access", repo("a"), PULL)),
        ("GET", "/v2/a/referrers/sha256:00", Need("access", repo("a"), PULL)),
        ("GET", "/v2/a/blobs/sha256:00", Need("access", repo("a"), PULL)),
        ("DELETE", "/v2/a/blobs/sha256:00", Need("access", repo("a"), DELETE)),
        ("POST", "/v2/a/blobs/uploads/", Need("access", repo("a"), PUSH)),
        ("PATCH", "/v2/a/blobs/uploads/123", Need("access", repo("a"), PUSH)),
        ("PUT", "/v2/a/blobs/uploads/123", Need("access", repo("a"), PUSH)),
        ("GET", "/v2/a/blobs/uploads/123", Need("access", repo("a"), PULL)),
        ("DELETE", "/v2/a/blobs/uploads/123", Need("access", repo("a"), DELETE)),
        ("OPTIONS", "/v2/a/manifests/v1", Need("access", repo("a"), DELETE)),
        ("GET", "/v2/A/manifests/v1", Need("name_invalid")),
        ("GET", "/v2/a/../b/manifests/v1", Need("name_invalid")),
        ("GET", "/v2/a/./b/manifests/v1", Need("name_invalid")),
        ("GET", "/v2//a/manifests/v1", Need("name_invalid")),
    ],
)
def test_need_for_request(method: str, path: str, need: Need) -> None:
    assert need_for(method, path) == need


def test_need_for_mount_names_the_source_only_when_unambiguous() -> None:
    assert need_for("POST", "/v2/a/blobs/uploads/", b"mount=sha256:00&from=b").mount_from == repo("b")
    assert need_for("POST", "/v2/a/blobs/uploads/", b"mount=sha256:00&from=b&from=c").mount_from is None
    assert need_for("POST", "/v2/a/blobs/uploads/", b"mount=x&mount=y&from=b").mount_from is None
    assert need_for("POST", "/v2/a/blobs/uploads/", b"mount=sha256:00").mount_from is None
    assert need_for("POST", "/v2/a/blobs/uploads/", b"mount=sha256%3A00&from=%62").mount_from == repo("b")


def test_without_mount_keeps_other_parameters() -> None:
    assert is_mount(b"mount=sha256:00&from=b&digest=sha256:11")
    assert not is_mount(b"digest=sha256:11")
    stripped = without_mount(b"mount=sha256:00&from=b&digest=sha256:11&from=c")
    assert stripped == b"digest=sha256%3A11"
    assert not is_mount(stripped)


def test_challenge_scopes_ask_pull_and_push_for_push_and_pull_on_mount_source() -> None:
    need = need_for("POST", "/v2/a/blobs/uploads/", b"mount=sha256:00&from=b")
    assert need.challenge_scopes() == ["repository:a:pull,push", "repository:b:pull"]
    assert need_for("GET", "/v2/_catalog").challenge_scopes() == ["registry:catalog:*"]
    assert need_for("GET", "/v2/").challenge_scopes() == []

"""Who may do what: access rules (``USER:TARGET:ACTIONS``), Docker token scopes, and the access
each registry request needs. Pure functions, no I/O.

Rules (``registry.access``)::

    alice:*:pull,push,delete      alice may do anything to every repository
    bob:team/*:pull               bob may pull repositories under team/ (at any depth)
    *:public/*:pull               every authenticated user may pull public/...
    anonymous:public/*:pull       requests without credentials may pull public/...
    ops:registry:catalog:*        ops may list /v2/_catalog
    *:registry:gateway:pull       every authenticated user may read /ipfs/<cid>

USER is a user name, ``*`` (any authenticated user) or ``anonymous`` (no credentials; may only
be granted ``pull``). TARGET is a repository glob where ``*`` stands for any run of characters,
``/`` included, and nothing else is special (``team/*`` matches ``team/a`` and ``team/a/b``, not
``team``); or ``registry:catalog`` (action ``*``) or ``registry:gateway`` (action ``pull``).
Globs never match the ``registry:`` targets and only ever match valid repository names. ACTIONS
is a comma list of ``pull``, ``push``, ``delete`` or ``*`` (all of them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode

from ipfsreg.registry.names import is_valid_name
from ipfsreg.registry.routes import match_route

PULL: Final = "pull"
PUSH: Final = "push"
DELETE: Final = "delete"
ALL: Final = "*"
REPOSITORY_ACTIONS: Final = frozenset({PULL, PUSH, DELETE})
ANONYMOUS: Final = "anonymous"
ANY_USER: Final = "*"
REPOSITORY: Final = "repository"
REGISTRY: Final = "registry"
# The actions each registry-wide resource knows (Docker's catalog scope is registry:catalog:*).
REGISTRY_RESOURCES: Final = {"catalog": frozenset({ALL}), "gateway": frozenset({PULL})}
_GLOB_CHARS: Final = re.compile(r"[a-z0-9._/*-]+")
_USER_RE: Final = re.compile(r"[^\s:]+")


class AuthConfigError(Exception):
    """The auth configuration (rules, htpasswd file, keys) is unusable: raised at startup."""


@dataclass(frozen=True)
class Resource:
    type: str  # "repository" or "registry"
    name: str

    def actions_known(self) -> frozenset[str]:
        if self.type == REPOSITORY:
            return REPOSITORY_ACTIONS if is_valid_name(self.name) else frozenset()
        if self.type == REGISTRY:
            return REGISTRY_RESOURCES.get(self.name, frozenset())
        return frozenset()


CATALOG: Final = Resource(REGISTRY, "catalog")
GATEWAY: Final = Resource(REGISTRY, "gateway")


@dataclass(frozen=True)
class Access:
    """One entry of a token's ``access`` claim or of a ``scope`` parameter."""

    resource: Resource
    actions: tuple[str, ...]

    def scope(self) -> str:
        return f"{self.resource.type}:{self.resource.name}:{','.join(self.actions)}"

    def to_claim(self) -> dict[str, object]:
        return {"type": self.resource.type, "name": self.resource.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class Principal:
    """The requester: a user from htpasswd, or anonymous (``name`` empty)."""

    name: str

    @property
    def anonymous(self) -> bool:
        return self.name == ""


ANONYMOUS_PRINCIPAL: Final = Principal("")


def parse_scope(text: str) -> Access | None:
    """``type:name:actions`` (the name may not hold ``:``); None for anything malformed or classed."""
    first, last = text.find(":"), text.rfind(":")
    if first <= 0 or last == first:
        return None
    rtype, name, actions = text[:first], text[first + 1 : last], text[last + 1 :]
    if not name or not re.fullmatch(r"[a-z]+", rtype):  # "repository(plugin)" classes are not served
        return None
    wanted = tuple(dict.fromkeys(a for a in actions.split(",") if a))
    if not wanted:
        return None
    return Access(Resource(rtype, name), wanted)


def parse_scopes(values: Iterable[str]) -> list[Access]:
    """Scopes from repeated ``scope`` parameters, each possibly space-separated (OAuth2 style)."""
    out: list[Access] = []
    for value in values:
        for item in value.split():
            access = parse_scope(item)
            if access is not None:
                out.append(access)
    return out


@dataclass(frozen=True)
class Rule:
    user: str
    target: str
    actions: frozenset[str]
    pattern: re.Pattern[str] | None  # compiled repository glob; None for a registry: target

    def applies_to(self, principal: Principal) -> bool:
        if principal.anonymous:
            return self.user == ANONYMOUS
        return self.user == ANY_USER or self.user == principal.name

    def grants(self, resource: Resource) -> frozenset[str]:
        """The actions this rule gives on ``resource`` (user already matched)."""
        known = resource.actions_known()
        if not known:
            return frozenset()
        if resource.type == REPOSITORY:
            if self.pattern is None or self.pattern.fullmatch(resource.name) is None:
                return frozenset()
        elif self.pattern is not None or self.target != f"{REGISTRY}:{resource.name}":
            return frozenset()
        return known if ALL in self.actions else known & self.actions


def parse_rule(text: str) -> Rule:
    """One ``USER:TARGET:ACTIONS`` rule, or :class:`AuthConfigError` saying what is wrong."""
    first, last = text.find(":"), text.rfind(":")
    if first <= 0 or last == first:
        raise AuthConfigError(f"access rule {text!r}: expected USER:TARGET:ACTIONS")
    user, target, action_list = text[:first].strip(), text[first + 1 : last].strip(), text[last + 1 :]
    if not _USER_RE.fullmatch(user):
        raise AuthConfigError(f"access rule {text!r}: bad user {user!r}")
    actions = frozenset(a.strip() for a in action_list.split(",") if a.strip())
    if not actions:
        raise AuthConfigError(f"access rule {text!r}: no actions")
    pattern: re.Pattern[str] | None = None
    if target.startswith(REGISTRY + ":"):
        known = REGISTRY_RESOURCES.get(target[len(REGISTRY) + 1 :])
        if known is None:
            raise AuthConfigError(
                f"access rule {text!r}: unknown target {target!r} (registry:catalog or registry:gateway)"
            )
        valid = known | {ALL}
    else:
        if not _GLOB_CHARS.fullmatch(target):
            raise AuthConfigError(
                f"access rule {text!r}: repository glob {target!r} may hold only a-z 0-9 . _ / - and *"
            )
        pattern = re.compile(".*".join(re.escape(part) for part in target.split("*")))
        valid = REPOSITORY_ACTIONS | {ALL}
    unknown = actions - valid
    if unknown:
        raise AuthConfigError(
            f"access rule {text!r}: unknown action(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(valid))})"
        )
    if user == ANONYMOUS and ((ALL in actions and pattern is not None) or actions - {PULL, ALL}):
        raise AuthConfigError(f"access rule {text!r}: anonymous requests may only be granted pull")
    return Rule(user, target, actions, pattern)


# What every authenticated user may do when no rules are configured (distribution's htpasswd mode).
_OPEN_RULES: Final = ("*:*:*", "*:registry:catalog:*", "*:registry:gateway:pull")
_ANONYMOUS_PULL_RULES: Final = ("anonymous:*:pull", "anonymous:registry:gateway:pull")


class Policy:
    """The rights of every principal, from rules; grants are the union of matching rules."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def from_settings(cls, access: Sequence[str], *, anonymous_pull: bool) -> Policy:
        texts = list(access) if access else list(_OPEN_RULES)
        if anonymous_pull:
            texts += _ANONYMOUS_PULL_RULES
        return cls([parse_rule(t) for t in texts])

    def actions(self, principal: Principal, resource: Resource) -> frozenset[str]:
        granted: frozenset[str] = frozenset()
        for rule in self.rules:
            if rule.applies_to(principal):
                granted |= rule.grants(resource)
        return granted

    def allows(self, principal: Principal, resource: Resource, action: str) -> bool:
        return action in self.actions(principal, resource)

    def grant(self, principal: Principal, requested: Sequence[Access]) -> list[Access]:
        """The Docker token rule: each requested scope cut down to what ``principal`` may do.

        A requested ``*`` on a repository stands for all of its actions. Scopes for the same
        resource are merged; resources with nothing granted are left out.
        """
        merged: dict[Resource, list[str]] = {}
        for access in requested:
            allowed = self.actions(principal, access.resource)
            wanted: Iterable[str] = access.actions
            if access.resource.type == REPOSITORY and ALL in access.actions:
                wanted = (PULL, PUSH, DELETE)
            into = merged.setdefault(access.resource, [])
            into.extend(a for a in wanted if a in allowed and a not in into)
        return [Access(resource, tuple(actions)) for resource, actions in merged.items() if actions]


@dataclass(frozen=True)
class Need:
    """The access a request needs.

    ``kind``: ``"login"`` (any authenticated requester: ``/v2/`` and unknown paths), ``"access"``
    (``action`` on ``resource``) or ``"name_invalid"`` (a repository name outside the grammar).
    ``mount_from``: a cross-repository mount source; the mount may only happen with pull on it.
    """

    kind: str
    resource: Resource | None = None
    action: str = ""
    mount_from: Resource | None = None

    def challenge_scopes(self) -> list[str]:
        if self.resource is None:
            return []
        if self.resource.type == REPOSITORY:
            actions = f"{PULL},{PUSH}" if self.action == PUSH else self.action
            scopes = [f"{REPOSITORY}:{self.resource.name}:{actions}"]
            if self.mount_from is not None:
                scopes.append(f"{REPOSITORY}:{self.mount_from.name}:{PULL}")
            return scopes
        return [f"{REGISTRY}:{self.resource.name}:{self.action}"]


_METHOD_ACTIONS: Final = {
    "GET": PULL,
    "HEAD": PULL,
    "POST": PUSH,
    "PUT": PUSH,
    "PATCH": PUSH,
    "DELETE": DELETE,
}


def need_for(method: str, path: str, query_string: bytes = b"") -> Need:
    """The access needed for ``method path?query`` on the registry port."""
    if path == "/ipfs" or path.startswith("/ipfs/"):
        return Need("access", GATEWAY, PULL)
    route = match_route(path) if path.startswith("/v2") else None
    if route is None or route.kind == "base":
        return Need("login")
    if route.kind == "catalog":
        return Need("access", CATALOG, ALL)
    if not is_valid_name(route.name):
        return Need("name_invalid")
    # Unknown methods count as the strongest action: whatever the app does with them, no one
    # without delete rights reaches it.
    action = _METHOD_ACTIONS.get(method.upper(), DELETE)
    mount_from = None
    if route.kind == "uploads" and method.upper() == "POST":
        # Only an unambiguous mount (one mount, one from) is ever let through; any other shape
        # is stripped by the middleware, so parsers that pick the first or the last repeated
        # parameter cannot disagree about the source.
        pairs = _query_pairs(query_string)
        mounts = [v for k, v in pairs if k == "mount"]
        sources = [v for k, v in pairs if k == "from"]
        if len(mounts) == 1 and len(sources) == 1 and mounts[0] and sources[0]:
            mount_from = Resource(REPOSITORY, sources[0])
    return Need("access", Resource(REPOSITORY, route.name), action, mount_from)


def _query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8")


def is_mount(query_string: bytes) -> bool:
    """Whether the query asks for a mount in any shape (``mount`` present at all)."""
    return any(key == "mount" for key, _ in _query_pairs(query_string))


def without_mount(query_string: bytes) -> bytes:
    """The query without ``mount``/``from``: the registry then opens an upload session instead."""
    pairs = _query_pairs(query_string)
    return urlencode([(k, v) for k, v in pairs if k not in ("mount", "from")]).encode("ascii")

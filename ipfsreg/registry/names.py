"""Repository-name and tag grammar of the distribution spec, ``ipfs/<cid>`` names, and the pull references
(``HOST/ipfs/<cidv1>:TAG``) that name images on IPFS, as pure functions."""

from __future__ import annotations

import re
from typing import Final

from ipfsreg.cid import CID, CIDError
from ipfsreg.registry.errors import RegistryError

_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE: Final = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH: Final = 255


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return ``name`` or raise NAME_INVALID."""
    if not is_valid_name(name):
        raise RegistryError("NAME_INVALID", {"name": name[:300]})
    return name


def check_request_path(path: str, raw_path: bytes, raw_name: str | None) -> None:
    """Refuse, with NAME_INVALID, request paths whose repository name could only be reached by
    rewriting them: control characters (``%0d%0a``), empty components (``//``, ``%2F%2F``) and
    percent-encoded characters in the name (``a%2Fb``): no valid name needs any of these.

    ``path`` is the decoded path, ``raw_path`` the path as sent, ``raw_name`` the repository name
    that routing finds in ``raw_path`` (None when it routes nowhere).
    """
    shown = raw_path.decode("latin-1")[:300]
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise RegistryError(
            "NAME_INVALID",
            {"path": shown, "reason": "control characters are not allowed in a repository name"},
        )
    if "//" in path or "//" in shown:
        raise RegistryError("NAME_INVALID", {"path": shown, "reason": "empty path component"})
    if raw_name is not None and "%" in raw_name:
        raise RegistryError(
            "NAME_INVALID",
            {"path": shown, "reason": "percent-encoded characters are not allowed in a repository name"},
        )


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


IPFS_PREFIX: Final = "ipfs/"


def ipfs_repository_cid(name: str) -> CID | None:
    """The CID of an ``ipfs/<cid>`` repository name (an image directory pulled by CID), else None.

    Docker's reference grammar allows lowercase only, so the CID must be CIDv1 in base32; a CIDv0
    (``Qm...``) or another base gets NAME_INVALID with the name to use instead.
    """
    if not name.startswith(IPFS_PREFIX):
        return None
    text = name[len(IPFS_PREFIX) :]
    try:
        cid = CID.parse(text)
    except CIDError:
        raise RegistryError(
            "NAME_INVALID", {"name": name[:300], "reason": "ipfs/<cid> repositories need a valid CID"}
        ) from None
    canonical = ipfs_repository_name(cid)
    if canonical != name:
        raise RegistryError(
            "NAME_INVALID",
            {"name": name[:300], "reason": f"use the CIDv1 base32 form of the CID: {canonical}"},
            message="repository names are lowercase: pull an image by CID as ipfs/<CIDv1 base32>",
        )
    return cid


def ipfs_repository_name(cid: CID) -> str:
    """``ipfs/<CIDv1 base32>``: the repository that serves the image directory ``cid``."""
    return IPFS_PREFIX + str(cid.to_v1())


# --- registry hosts, as ``?ns=`` names them (docker reference grammar: domain[:port]) -----------

_DOMAIN_COMPONENT: Final = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
NAMESPACE_RE: Final = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-f:.]+\])(?::[0-9]{{1,5}})?"
)
MAX_NAMESPACE_LENGTH: Final = 253
DOCKER_HUB: Final = "docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def canonical_namespace(text: str) -> str | None:
    """The registry host ``text`` names (lower case; Docker Hub's aliases as ``docker.io``), or None.

    As in docker's reference grammar, a host has a dot or a port, or is ``localhost``: anything else
    (``library``, ``ipfs``) is the first component of a repository name, never a registry.
    """
    host = text.lower()
    if len(host) > MAX_NAMESPACE_LENGTH or NAMESPACE_RE.fullmatch(host) is None:
        return None
    if not ("." in host or ":" in host or host == "localhost"):
        return None
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def parse_namespace(text: str) -> str:
    """The canonical registry host of an ``ns`` query parameter, or NAME_INVALID."""
    host = canonical_namespace(text)
    if host is None:
        raise RegistryError(
            "NAME_INVALID",
            {"ns": text[:300], "reason": "ns must name a registry host (e.g. docker.io or host:port)"},
        )
    return host


def qualified_name(namespace: str, name: str) -> str:
    """The repository that holds ``name`` pulled through registry ``namespace``: ``<namespace>/<name>``."""
    return f"{namespace}/{name}"


IPNS_PREFIX: Final = "ipns/"


def ipns_repository(name: str) -> tuple[str, str] | None:
    """``(ipns name, repository)`` of an ``ipns/<k51... name>/<repository>`` repository name, else None.

    The name must be the lowercase base36 CIDv1 (``k51...``) docker's grammar allows; any other form
    gets NAME_INVALID with the name to use instead.
    """
    if not name.startswith(IPNS_PREFIX):
        return None
    from ipfsreg.ipns.record import IpnsError, IpnsName

    ipns_text, _, repository = name[len(IPNS_PREFIX) :].partition("/")
    try:
        parsed = IpnsName.parse(ipns_text)
    except IpnsError as exc:
        raise RegistryError("NAME_INVALID", {"name": name[:300], "reason": str(exc)}) from None
    if str(parsed) != ipns_text:
        raise RegistryError(
            "NAME_INVALID",
            {"name": name[:300], "reason": f"use the base36 form of the IPNS name: {parsed}"},
            message="repository names are lowercase: pull by IPNS name as ipns/<k51...>/<repository>",
        )
    if not repository or not is_valid_name(repository):
        raise RegistryError(
            "NAME_INVALID",
            {"name": name[:300], "reason": "expected ipns/<name>/<repository> with a valid repository name"},
        )
    return ipns_text, repository


def pull_reference(cid: CID, tag: str, host: str | None = None) -> str:
    """``[HOST/]ipfs/<CIDv1 base32>:TAG``: the image directory ``cid`` as docker, podman and skopeo
    pull it from any ipfsreg (they refuse the CIDv0 ``Qm...`` form: repository names are lowercase)."""
    reference = f"{ipfs_repository_name(cid)}:{tag}"
    return f"{host}/{reference}" if host else reference


_HOST_RE: Final = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
_WILDCARDS: Final = ("0.0.0.0", "[::]", "::")


def reference_host(host: str | None) -> str | None:
    """``host[:port]`` as a pull reference's registry part, or None when it cannot be one.

    A wildcard listen address (0.0.0.0, [::]) becomes ``localhost``: the CLI prints references on
    the machine the server runs on."""
    if not host:
        return None
    text = host.strip()
    if "://" in text:
        text = text.split("://", 1)[1].split("/", 1)[0]
    match = _HOST_RE.fullmatch(text)
    if match is None:
        return None
    name, port = match.group(1), match.group(2) or ""
    if name in _WILDCARDS:
        name = "localhost"
    return name + port

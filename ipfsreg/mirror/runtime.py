"""Container runtimes' mirror configuration pointing at this node (``ipfsreg mirror config``). Pure.

- containerd: ``<registry>/hosts.toml`` per registry plus ``_default/hosts.toml`` under its hosts
  directory (``/etc/containerd/certs.d``): this node first (capabilities pull and resolve, a short
  dial timeout so a node whose mirror is down falls through at once), the registry itself second.
  containerd sends ``?ns=<registry>`` to the mirror.
- CRI-O and podman: a ``registries.conf.d`` drop-in with one ``[[registry]]`` per registry whose
  mirror is ``<node>/<registry>``: containers/image sends no ``ns``, so the registry rides in the
  repository path, the same repository ``?ns=`` names.
- docker: ``daemon.json`` ``registry-mirrors``. dockerd mirrors docker.io only, without ``ns``: this
  node answers those requests through ``[registry] upstream``, which must be Docker Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from ipfsreg.mirror.rules import api_host
from ipfsreg.registry.names import DOCKER_HUB

RUNTIMES: Final = ("containerd", "cri-o", "docker", "podman")
DEFAULT_DIAL_TIMEOUT: Final = "1s"
DROP_IN: Final = "50-ipfsreg-mirror.conf"
DEFAULT_DIRS: Final = {
    "containerd": "/etc/containerd/certs.d",
    "cri-o": "/etc/containers/registries.conf.d",
    "podman": "/etc/containers/registries.conf.d",
    "docker": "/etc/docker",
}


class RuntimeConfigError(ValueError):
    """A runtime configuration that cannot be made (unknown runtime, unusable address)."""


@dataclass(frozen=True)
class RuntimeFile:
    path: str  # relative to the runtime's configuration directory
    content: str


@dataclass(frozen=True)
class RuntimeConfig:
    runtime: str
    files: list[RuntimeFile]
    notes: list[str] = field(default_factory=list)


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a TOML basic string is a JSON string for these characters


def registry_server(registry: str, upstreams: dict[str, str]) -> str:
    """Where the runtime goes when the mirror fails: the upstream this node uses, else the registry."""
    return upstreams.get(registry) or f"https://{api_host(registry)}"


def containerd_config(
    mirror_url: str,
    registries: list[str],
    upstreams: dict[str, str],
    dial_timeout: str = DEFAULT_DIAL_TIMEOUT,
) -> RuntimeConfig:
    host = (
        f"[host.{_toml_string(mirror_url)}]\n"
        '  capabilities = ["pull", "resolve"]\n'
        f"  dial_timeout = {_toml_string(dial_timeout)}\n"
    )
    files: list[RuntimeFile] = []
    for registry in registries:
        files.append(
            RuntimeFile(
                f"{registry}/hosts.toml",
                f"# {registry}: the ipfsreg mirror at {mirror_url} first, the registry itself second.\n"
                f"server = {_toml_string(registry_server(registry, upstreams))}\n\n" + host,
            )
        )
    files.append(
        RuntimeFile(
            "_default/hosts.toml",
            f"# Any other registry: the ipfsreg mirror at {mirror_url} first, the registry itself second.\n\n"
            + host,
        )
    )
    notes = [
        "containerd reads these from its hosts directory: `ctr ... --hosts-dir DIR`, or for the CRI plugin "
        '[plugins."io.containerd.grpc.v1.cri".registry] config_path = "/etc/containerd/certs.d"'
    ]
    return RuntimeConfig("containerd", files, notes)


def registries_conf(
    runtime: str, mirror_url: str, registries: list[str], upstreams: dict[str, str]
) -> RuntimeConfig:
    parts = urlsplit(mirror_url)
    insecure = parts.scheme == "http"
    lines = [
        f"# {runtime}: pull through the ipfsreg mirror at {mirror_url} first (containers-registries.conf v2)."
    ]
    for registry in registries:
        server = urlsplit(registry_server(registry, upstreams))
        location = DOCKER_HUB if registry == DOCKER_HUB else server.netloc + server.path.rstrip("/")
        lines += [
            "",
            "[[registry]]",
            f"prefix = {_toml_string(registry)}",
            f"location = {_toml_string(location)}",
        ]
        if server.scheme == "http":
            lines.append("insecure = true")
        lines += ["", "[[registry.mirror]]", f"location = {_toml_string(parts.netloc + '/' + registry)}"]
        if insecure:
            lines.append("insecure = true")
    notes = [
        f"{runtime} sends no ?ns=: the mirror location carries the registry in the path, which ipfsreg "
        "serves for registries listed in [[mirror.upstream]] (or all, with [mirror] default_url)"
    ]
    return RuntimeConfig(runtime, [RuntimeFile(DROP_IN, "\n".join(lines) + "\n")], notes)


def docker_config(mirror_url: str, registries: list[str], existing: str | None = None) -> RuntimeConfig:
    try:
        doc = json.loads(existing) if existing and existing.strip() else {}
    except json.JSONDecodeError as exc:
        raise RuntimeConfigError(f"the existing daemon.json is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RuntimeConfigError("the existing daemon.json is not a JSON object")
    mirrors = [m for m in doc.get("registry-mirrors", []) if m != mirror_url]
    doc["registry-mirrors"] = [mirror_url, *mirrors]
    notes = [
        "docker mirrors docker.io only (registry-mirrors), and sends no ?ns=: set [registry] upstream = "
        '"https://registry-1.docker.io" on this node so those pulls go through Docker Hub'
    ]
    others = [r for r in registries if r != DOCKER_HUB]
    if others:
        notes.append(f"docker cannot use a mirror for {', '.join(others)}: only docker.io is mirrored")
    return RuntimeConfig("docker", [RuntimeFile("daemon.json", json.dumps(doc, indent=2) + "\n")], notes)


def runtime_config(
    runtime: str,
    mirror_url: str,
    registries: list[str],
    upstreams: dict[str, str] | None = None,
    *,
    existing_daemon_json: str | None = None,
) -> RuntimeConfig:
    """The files (and notes for the user) that make ``runtime`` pull through the mirror at ``mirror_url``.

    ``upstreams`` maps registries to the URL this node pulls them from (the runtime's fallback).
    """
    parts = urlsplit(mirror_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise RuntimeConfigError(f"the mirror address must be http(s)://HOST:PORT, got {mirror_url!r}")
    mirror_url = f"{parts.scheme}://{parts.netloc}"
    known = upstreams or {}
    if runtime == "containerd":
        return containerd_config(mirror_url, registries, known)
    if runtime in ("cri-o", "podman"):
        return registries_conf(runtime, mirror_url, registries, known)
    if runtime == "docker":
        return docker_config(mirror_url, registries, existing_daemon_json)
    raise RuntimeConfigError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")


def mirror_address(listen: str, *, tls: bool) -> str:
    """The URL a runtime on this machine uses for a registry listening on ``listen`` (HOST:PORT)."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{'https' if tls else 'http'}://{host}:{port}"

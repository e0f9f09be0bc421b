"""Image-level operations shared by the CLI and the control API: NAME:TAG parsing, push, JSON views,
and the pull references (``HOST/ipfs/<cidv1>:TAG``) they print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ipfsreg.oci.reader import LATEST
from ipfsreg.ops import OpsError
from ipfsreg.registry.names import check_name, is_valid_tag, pull_reference

if TYPE_CHECKING:
    from ipfsreg.registry.storage import RegistryStore


def split_name_optional_tag(text: str) -> tuple[str, str | None]:
    """``NAME[:TAG]`` -> (name, tag or None); names and tags are checked."""
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        check_name(text)
        return text, None
    check_name(name)
    if not is_valid_tag(tag):
        raise OpsError(f"invalid tag {tag!r}: use [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    return name, tag


def split_name_tag(text: str) -> tuple[str, str]:
    """``NAME[:TAG]`` -> (name, tag), the tag defaulting to ``latest``; names are checked."""
    name, tag = split_name_optional_tag(text)
    return name, LATEST if tag is None else tag


def image_json(info: Any, host: str | None = None) -> dict[str, str]:
    """An image as the CLI and the control API show it: ``cid`` is the Kubo-parity CID (as in
    X-Ipfs-Path), ``reference`` what a container client pulls (``registry.names.pull_reference``)."""
    return {
        "name": info.name,
        "tag": info.tag,
        "digest": str(info.digest),
        "cid": str(info.cid),
        "reference": pull_reference(info.cid, info.tag, host),
    }


def pulled_json(image: Any, host: str | None = None) -> dict[str, Any]:
    return {**image_json(image, host), "blobs": image.blobs}


async def push_image(registry: RegistryStore, path: Path, name: str, tag: str) -> Any:
    """``ipfsreg push``: an OCI layout directory or a ``docker save`` tarball into ``name:tag``."""
    from ipfsreg.registry import images

    if await trio.Path(path).is_dir():
        return await images.import_layout_dir(registry, path, name, tag)
    if await trio.Path(path).is_file():
        return await images.import_docker_save(registry, path, name, tag)
    raise OpsError(f"{path}: no such OCI layout directory or docker save tarball")

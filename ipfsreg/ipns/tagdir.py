"""The UnixFS directory an IPNS record of ipfsreg points at: every tag of the repositories bound to a key.

Layout (CIDv1 dag-pb directories, HAMT-sharded past Kubo's threshold like any other)::

    /ipfs/<root>/<repository path>/<tag>/  ->  that tag's OCI Image Layout directory (no copy: a link)

e.g. ``app/v1/``, ``team/api/latest/``. A directory holding an ``oci-layout`` entry is an image; every
other directory is a component of a repository name. A tag of ``a`` and the first component of a
nested repository ``a/b`` would share one name: the tag wins and the nested repository is left out
(:func:`build_tag_directory` reports it) -- bind such a repository to a key of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ipfsreg.cid import CID
from ipfsreg.oci.layout import OCI_LAYOUT_FILE
from ipfsreg.unixfs import exporter
from ipfsreg.unixfs.directory import DirectoryOptions, build_any_directory
from ipfsreg.unixfs.exporter import BlockSource
from ipfsreg.unixfs.importer import Block

DIRECTORY_OPTIONS: Final = DirectoryOptions(cid_version=1)
# How deep a published tag directory may nest (repository components plus the tag).
MAX_DEPTH: Final = 32


@dataclass(frozen=True)
class TagImage:
    cid: CID  # the image layout directory
    dag_size: int  # its cumulative size, for the link's Tsize


@dataclass
class TagDirectory:
    blocks: list[Block]
    root: CID
    dag_size: int
    skipped: list[str] = field(default_factory=list)  # repositories left out (name clash with a tag)


@dataclass
class _Node:
    tags: dict[str, TagImage] = field(default_factory=dict)
    children: dict[str, _Node] = field(default_factory=dict)


def build_tag_directory(images: Mapping[str, Mapping[str, TagImage]]) -> TagDirectory:
    """The directory of ``{repository: {tag: image}}`` (repositories without tags are left out)."""
    top = _Node()
    placed: list[tuple[str, _Node]] = []
    for repo in sorted(images):
        tags = images[repo]
        if not tags:
            continue
        node = top
        for part in repo.split("/"):
            node = node.children.setdefault(part, _Node())
        node.tags.update(tags)
        placed.append((repo, node))
    skipped: list[str] = []
    blocks: list[Block] = []

    def emit(node: _Node, path: str) -> tuple[CID, int]:
        entries: dict[str, tuple[CID, int]] = {
            tag: (image.cid, image.dag_size) for tag, image in node.tags.items()
        }
        for part, child in sorted(node.children.items()):
            child_path = f"{path}/{part}" if path else part
            if part in entries:
                skipped.extend(
                    repo for repo, _ in placed if repo == child_path or repo.startswith(child_path + "/")
                )
                continue
            entries[part] = emit(child, child_path)
        new_blocks, root, size = build_any_directory(entries, DIRECTORY_OPTIONS)
        blocks.extend(new_blocks)
        return root, size

    root, size = emit(top, "")
    return TagDirectory(blocks, root, size, sorted(set(skipped)))


async def dag_size(source: BlockSource, cid: CID) -> int:
    """Cumulative DAG size of a node: its block plus its links' Tsize (what Kubo's links record)."""
    return (await exporter.stat(source, cid)).cumulative_size


async def is_image(source: BlockSource, cid: CID) -> bool:
    info = await exporter.stat(source, cid)
    return (
        info.type in ("directory", "hamt") and await exporter.lookup(source, cid, OCI_LAYOUT_FILE) is not None
    )


async def resolve_tag(source: BlockSource, root: CID, repo: str, tag: str) -> CID | None:
    """The image layout of ``repo:tag`` in the tag directory ``root``, or None if it has none."""
    cid = root
    for part in [*repo.split("/"), tag]:
        info = await exporter.stat(source, cid)
        if info.type not in ("directory", "hamt"):
            return None
        child = await exporter.lookup(source, cid, part)
        if child is None:
            return None
        cid = child
    return cid if await is_image(source, cid) else None


async def list_images(source: BlockSource, root: CID) -> dict[str, dict[str, CID]]:
    """Every ``{repository: {tag: image layout CID}}`` in the tag directory ``root`` (images not entered)."""
    found: dict[str, dict[str, CID]] = {}

    async def walk(cid: CID, parts: tuple[str, ...]) -> None:
        if len(parts) > MAX_DEPTH:
            return
        for entry in await exporter.list_directory(source, cid):
            if await is_image(source, entry.cid):
                if parts:
                    found.setdefault("/".join(parts), {})[entry.name] = entry.cid
            elif (await exporter.stat(source, entry.cid)).type in ("directory", "hamt"):
                await walk(entry.cid, (*parts, entry.name))

    await walk(root, ())
    return found

"""UnixFS import profiles: the named parameter sets of IPIP-499, as Kubo >= 0.40 defines them.

A profile fixes every parameter that changes a UnixFS CID (Kubo's ``config/profile.go``):

================  ==============  =============  ==========  ===============  ====================
profile           CID, leaves     chunk size     file links  HAMT threshold   size estimation
================  ==============  =============  ==========  ===============  ====================
unixfs-v0-2015    v0, dag-pb      256 KiB        174         256 KiB (``>``)  links (name + CID)
unixfs-v1-2025    v1, raw         1 MiB          1024        256 KiB (``>``)  block (dag-pb bytes)
================  ==============  =============  ==========  ===============  ====================

Both use sha2-256, the balanced layout, HAMT fanout 256 and no directory link limit.
``unixfs-v0-2015`` is Kubo's ``ipfs add`` default and ipfsreg's (``legacy-cid-v0`` is Kubo's alias
for it). Explicit settings (chunk size, CID version, links) override a profile's, as Kubo's ``ipfs add``
flags override its ``Import`` config; raw leaves follow the CID version unless set.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from ipfsreg.unixfs.importer import ImportOptions

UNIXFS_V0_2015: Final = ImportOptions(
    chunk_size=256 * 1024, cid_version=0, max_links=174, hamt_threshold=256 * 1024, hamt_estimation="links"
)
UNIXFS_V1_2025: Final = ImportOptions(
    chunk_size=1024 * 1024, cid_version=1, max_links=1024, hamt_threshold=256 * 1024, hamt_estimation="block"
)
PROFILES: Final = {
    "unixfs-v0-2015": UNIXFS_V0_2015,
    "legacy-cid-v0": UNIXFS_V0_2015,
    "unixfs-v1-2025": UNIXFS_V1_2025,
}
DEFAULT_PROFILE: Final = "unixfs-v0-2015"


def import_profile(name: str) -> ImportOptions:
    """The options of a named profile; ValueError naming the known profiles otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown import profile {name!r} (known: {', '.join(PROFILES)})") from None


def profile_options(
    name: str,
    *,
    chunk_size: int | None = None,
    cid_version: int | None = None,
    max_links: int | None = None,
    raw_leaves: bool | None = None,
) -> ImportOptions:
    """Profile ``name`` with the given settings (those not None) in place of its own.

    Raises ValueError for an unknown profile or an out-of-range setting.
    """
    base = import_profile(name)
    return dataclasses.replace(
        base,
        chunk_size=base.chunk_size if chunk_size is None else chunk_size,
        cid_version=base.cid_version if cid_version is None else cid_version,
        max_links=base.max_links if max_links is None else max_links,
        raw_leaves=base.raw_leaves if raw_leaves is None else raw_leaves,
    )

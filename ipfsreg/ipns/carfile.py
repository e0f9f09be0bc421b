"""A repository's IPNS record inside an image's CAR (``ipfsreg export NAME:TAG``), so signed tags survive
sneakernet; ``ipfsreg import`` verifies and stores it.

When ``NAME`` is bound to a key that has a record, the CAR's roots are, after the image directory:

- the record as one block of codec ``ipns-record`` (multicodec 0x0300, sha2-256), with ``pubKey``
  filled in: ``pubKey`` is outside the signed data, so the record stays valid and names its key
  itself (an Ed25519 record otherwise gets its key from the name, which a CAR does not carry);
- raw-codec CIDs (``raw`` 0x55, same multihash) of the tag-directory nodes on the path
  ``<repository>/<tag>``: a CAR walker treats them as single blocks, so the path to the image is
  exported without the other tags' images, and the blockstore (keyed by multihash) serves them back
  as the dag-pb nodes they are, so ``ipns/<name>/<repository>:<tag>`` resolves offline.

Readers that ignore these roots (Kubo's ``ipfs dag import --pin-roots=false``) import the image as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID, RAW
from ipfsreg.ipns.record import (
    IpnsError,
    IpnsName,
    IpnsRecord,
    _bytes_field,
    _decode_entry,
    _varint_field,
    decode_record,
    value_cid,
)
from ipfsreg.unixfs import exporter
from ipfsreg.unixfs.exporter import BlockSource

IPNS_RECORD_CODEC: Final = 0x0300


RecordSink = Callable[[IpnsName, bytes], tuple[IpnsRecord, bool]]
"""Where imported records go: ``(name, raw) -> (verified record, stored)`` (IpnsService.import_record)."""


@dataclass(frozen=True)
class ImportedRecord:
    name: IpnsName
    record: IpnsRecord
    stored: bool  # False: the node already had this record or a better one


def with_public_key(raw: bytes, public_key: bytes) -> bytes:
    """``raw`` with ``pubKey`` set (fields re-emitted in number order; nothing signed changes)."""
    fields = _decode_entry(raw)
    fields[7] = public_key
    out = b""
    for number in sorted(fields):
        value = fields[number]
        out += _varint_field(number, value) if isinstance(value, int) else _bytes_field(number, value)
    return out


async def export_roots(
    datastore: Datastore, source: BlockSource, name: IpnsName, record: IpnsRecord, repository: str, tag: str
) -> list[CID]:
    """Store the CAR form of ``record`` as a block and return the extra roots (see the module docstring)."""
    public_key = name.inlined_key()
    raw = record.raw if public_key is None or record.pub_key else with_public_key(record.raw, public_key)
    record_cid = CID.hash(raw, codec=IPNS_RECORD_CODEC)
    datastore.blocks.put(record_cid, raw)
    roots = [record_cid]
    cid, _ = value_cid(record)
    for part in [*repository.split("/"), tag]:
        roots.append(CID.v1(RAW, cid.multihash))
        child = await exporter.lookup(source, cid, part)
        if child is None:
            break
        cid = child
    return roots


def import_records(datastore: Datastore, roots: Sequence[CID], offer: RecordSink) -> list[ImportedRecord]:
    """Verify and keep every ``ipns-record`` root's record (blocks already stored by the CAR import)."""
    imported: list[ImportedRecord] = []
    for root in roots:
        if root.codec != IPNS_RECORD_CODEC:
            continue
        raw = datastore.blocks.get(root)
        record = decode_record(raw)
        if record.pub_key is None:
            raise IpnsError(f"the IPNS record {root} in the CAR carries no pubKey: its name is unknown")
        name = IpnsName.of_serialized_key(record.pub_key)
        verified, stored = offer(name, raw)
        imported.append(ImportedRecord(name, verified, stored))
    return imported


def image_roots(roots: Sequence[CID]) -> list[CID]:
    """The roots other than IPNS extras: in a CAR with a record root, its raw roots are tag-directory
    views (see the module docstring); any other CAR's roots are returned as they are."""
    if not any(root.codec == IPNS_RECORD_CODEC for root in roots):
        return list(roots)
    return [root for root in roots if root.codec not in (IPNS_RECORD_CODEC, RAW)]

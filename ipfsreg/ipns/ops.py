"""The ``ipfsreg key ...`` / ``ipfsreg name ...`` operations as JSON-ready results, shared by the control
API (a running server) and the CLI's local backend (a data dir with no server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ipfsreg.cid import CID
from ipfsreg.ipns import carfile
from ipfsreg.ipns.keystore import NamedKey
from ipfsreg.ipns.record import NANOSECONDS, IpnsName, IpnsRecord
from ipfsreg.ipns.service import IpnsService, Published
from ipfsreg.unixfs.exporter import BlockSource


def key_json(key: NamedKey) -> dict[str, str]:
    return {"name": key.name, "id": str(key.ipns_name), "peer_id": key.ipns_name.peer_id()}


def record_json(name: IpnsName, record: IpnsRecord) -> dict[str, Any]:
    return {
        "name": str(name),
        "value": record.value_text,
        "sequence": record.sequence,
        "validity": record.validity.decode(),
        "ttl": record.ttl / NANOSECONDS,
    }


def published_json(published: Published) -> dict[str, Any]:
    return {
        **record_json(published.name, published.record),
        "key": published.key,
        "repositories": published.repositories,
        "skipped": published.skipped,
        "routed": published.routed,
        "stored": published.stored,
        "route_error": published.route_error,
    }


async def resolve_json(service: IpnsService, name_text: str) -> dict[str, Any]:
    """The best valid record of a name (asking the network) and the images of its tag directory."""
    name = IpnsName.parse(name_text)
    record = await service.resolve(name, fresh=True)
    images = await service.list_images(name)
    return {
        **record_json(name, record),
        "images": {
            repo: {tag: str(cid) for tag, cid in tags.items()} for repo, tags in sorted(images.items())
        },
    }


async def export_roots(service: IpnsService, source: BlockSource, repository: str, tag: str) -> list[str]:
    """Extra CAR roots carrying the record of the key ``repository`` is bound to (none if unbound)."""
    found = service.record_of_repository(repository)
    if found is None:
        return []
    name, record = found
    roots = await carfile.export_roots(service.datastore, source, name, record, repository, tag)
    return [str(cid) for cid in roots]


def import_roots(service: IpnsService, roots: Sequence[CID]) -> dict[str, Any]:
    """Verify and keep the IPNS records among an imported CAR's roots; the image roots that remain."""
    imported = carfile.import_records(service.datastore, roots, service.import_record)
    return {
        "records": [{**record_json(item.name, item.record), "stored": item.stored} for item in imported],
        "roots": [str(cid) for cid in carfile.image_roots(roots)],
    }

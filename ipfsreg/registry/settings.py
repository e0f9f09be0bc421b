"""Settings of the registry front end (composed by the lead into the one config object)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RegistrySettings:
    listen: str = field(
        default="0.0.0.0:5000", metadata={"help": "HOST:PORT the registry HTTP API listens on"}
    )
    max_manifest_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "largest manifest body accepted, in bytes"}
    )
    max_chunk_bytes: int = field(
        default=0, metadata={"help": "largest upload chunk (one PATCH/PUT/POST body) in bytes; 0 = unlimited"}
    )
    max_blob_bytes: int = field(
        default=0, metadata={"help": "largest blob accepted, in bytes; 0 = unlimited"}
    )
    automatic_crossmount: bool = field(
        default=True,
        metadata={"help": "mount a blob on POST ?mount= without ?from= when any repository holds it"},
    )
    delete_enabled: bool = field(default=True, metadata={"help": "allow DELETE of blobs, manifests and tags"})
    upload_session_ttl: float = field(
        default=24 * 3600.0,
        metadata={"help": "seconds after its last chunk an unfinished upload session is dropped"},
    )
    upload_flush_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "bytes of blocks gathered before they are written to LevelDB in one batch"},
    )
    body_buffer_bytes: int = field(
        default=1024 * 1024,
        metadata={"help": "request body bytes buffered before the server stops reading the socket"},
    )
    catalog_max_entries: int = field(
        default=1000, metadata={"help": "largest page of /v2/_catalog and tags/list (the 'n' cap)"}
    )
    keep_alive_timeout: float = field(
        default=75.0, metadata={"help": "seconds an idle HTTP connection is kept"}
    )
    read_timeout: float = field(
        default=300.0, metadata={"help": "seconds without any request bytes before an upload is abandoned"}
    )

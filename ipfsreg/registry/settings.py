"""Settings of the registry front end (composed by the lead into the one config object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    max_live_uploads: int = field(
        default=1000,
        metadata={
            "help": "upload sessions held in memory at once (each holds at most one partial chunk); past "
            "it the least recently used idle one is dropped to its saved state (it resumes from there), "
            "and when all are busy a new session gets 429 TOOMANYREQUESTS; 0 = unlimited"
        },
    )
    max_uploads_per_client: int = field(
        default=1000,
        metadata={
            "help": "unfinished upload sessions one client (its user when authenticated, else its address) "
            "may have open; past it POST gets 429 TOOMANYREQUESTS with Retry-After; 0 = unlimited"
        },
    )
    upload_memory_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={
            "help": "upload bytes in flight in memory across all uploads (being hashed, chunked, written); "
            "past it uploads are read more slowly; 0 = unlimited"
        },
    )
    upload_flush_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "bytes of blocks gathered before they are written to LevelDB in one batch"},
    )
    body_buffer_bytes: int = field(
        default=512 * 1024,
        metadata={"help": "request body bytes buffered before the server stops reading the socket"},
    )
    catalog_max_entries: int = field(
        default=1000, metadata={"help": "largest page of /v2/_catalog and tags/list (the 'n' cap)"}
    )
    catalog_ipfs: bool = field(
        default=False,
        metadata={"help": "list the ipfs/<cid> repositories that pulls by CID create in /v2/_catalog"},
    )
    keep_alive_timeout: float = field(
        default=75.0, metadata={"help": "seconds an idle HTTP connection is kept"}
    )
    read_timeout: float = field(
        default=300.0, metadata={"help": "seconds without any request bytes before an upload is abandoned"}
    )
    # --- authentication and TLS (enforced by ipfsreg.auth.AuthApp; see ipfsreg/auth/__init__.py) ---
    htpasswd: Path | None = field(
        default=None,
        metadata={"help": "htpasswd file of bcrypt users; enables authentication (re-read when it changes)"},
    )
    auth_realm: str = field(default="ipfsreg", metadata={"help": "realm of the Basic auth challenge"})
    access: list[str] = field(
        default_factory=list,
        metadata={
            "help": "access rules USER:TARGET:ACTIONS (e.g. 'bob:team/*:pull'); empty = users may do anything"
        },
    )
    anonymous_pull: bool = field(
        default=False, metadata={"help": "requests without credentials may pull any repository"}
    )
    token_realm: str = field(
        default="",
        metadata={"help": "URL of the token service in Bearer challenges; empty = this server's /auth/token"},
    )
    token_service: str = field(default="ipfsreg", metadata={"help": "service (audience) of bearer tokens"})
    token_issuer: str = field(default="ipfsreg", metadata={"help": "issuer of bearer tokens"})
    token_key: Path | None = field(
        default=None,
        metadata={"help": "PEM private key (RSA or EC P-256) signing /auth/token tokens; enables token auth"},
    )
    token_rootcertbundle: Path | None = field(
        default=None,
        metadata={"help": "PEM public keys or certificates of an external token issuer; enables token auth"},
    )
    token_expiration: int = field(default=300, metadata={"help": "seconds a token from /auth/token is valid"})
    tls_cert: Path | None = field(default=None, metadata={"help": "PEM certificate (chain) for HTTPS"})
    tls_key: Path | None = field(default=None, metadata={"help": "PEM private key for HTTPS"})
    # --- pull-through cache (ipfsreg.registry.proxy; distribution's proxy.remoteurl/username/password) ---
    upstream: str = field(
        default="",
        metadata={"help": "URL of a registry to pull through (a pull-through cache; pushes are refused)"},
    )
    upstream_username: str = field(default="", metadata={"help": "username for the upstream registry"})
    upstream_password: str = field(default="", metadata={"help": "password for the upstream registry"})
    upstream_tag_ttl: float = field(
        default=60.0,
        metadata={
            "help": "seconds a tag pulled through the cache is served before the upstream is asked again "
            "(HEAD; the cached copy is served while the upstream is down); 0 = ask on every pull"
        },
    )

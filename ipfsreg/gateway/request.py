"""Pure parsing of trustless gateway requests: content path, response format negotiation, CAR parameters,
``dag-scope`` and ``entity-bytes`` (ipfs/specs http-gateways/trustless-gateway.md and path-gateway.md).

No I/O: :func:`parse_request` turns a path, query and headers into a :class:`GatewayRequest` or raises a
:class:`GatewayError` with the status the spec asks for (400 bad CID or parameter, 406 no acceptable
response type, 501 a known format this gateway does not produce).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from ipfsreg.cid import CID, CIDError
from ipfsreg.gateway.errors import BadRequest, NotAcceptable, NotImplementedByGateway

RAW_TYPE: Final = "application/vnd.ipld.raw"
CAR_TYPE: Final = "application/vnd.ipld.car"
# Formats of the path gateway that this gateway does not produce (501, not 400).
UNSUPPORTED_FORMATS: Final = {
    "tar": "application/x-tar",
    "dag-json": "application/vnd.ipld.dag-json",
    "dag-cbor": "application/vnd.ipld.dag-cbor",
    "json": "application/json",
    "cbor": "application/cbor",
    "ipns-record": "application/vnd.ipfs.ipns-record",
}
_UNSUPPORTED_TYPES: Final = frozenset(UNSUPPORTED_FORMATS.values()) - {"application/json"}
# Media ranges answered with deserialized content (file bytes, a directory listing).
_BROWSER_TYPES: Final = frozenset({"*/*", "text/*", "text/html", "application/*", "application/octet-stream"})
MAX_PATH_SEGMENTS: Final = 256


class ResponseFormat(enum.Enum):
    RAW = "raw"
    CAR = "car"
    DESERIALIZED = "deserialized"  # file bytes or an HTML directory listing
    JSON_LISTING = "json"  # file bytes or a JSON directory listing


class DagScope(enum.Enum):
    BLOCK = "block"
    ENTITY = "entity"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class EntityBytes:
    """``entity-bytes=from:to``: inclusive offsets, negative from the end; ``to`` None means ``*``."""

    start: int
    end: int | None

    def resolve(self, size: int) -> tuple[int, int] | None:
        """The byte range ``[lo, hi)`` within an entity of ``size`` bytes; None when it is empty."""
        lo = self.start if self.start >= 0 else max(size + self.start, 0)
        if self.end is None:
            hi = size
        elif self.end >= 0:
            hi = min(self.end + 1, size)
        else:
            hi = size + self.end + 1
        if lo >= hi or lo >= size:
            return None
        return lo, hi

    def starts_past_end(self, size: int) -> bool:
        """Whether the range lies wholly after an entity of ``size`` bytes (the spec's 400).

        A negative ``from`` counts from the end and is clamped to the start, so it never does; ``0:*``
        of an empty file asks for all of it, which is nothing."""
        return self.start > 0 and self.start >= size

    def __str__(self) -> str:
        return f"{self.start}:{'*' if self.end is None else self.end}"


@dataclass(frozen=True, slots=True)
class CarParams:
    version: int = 1
    order: str = "dfs"
    dups: bool = False

    @property
    def content_type(self) -> str:
        return f"{CAR_TYPE}; version={self.version}; order={self.order}; dups={'y' if self.dups else 'n'}"


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    root: CID
    segments: tuple[str, ...]
    format: ResponseFormat
    car: CarParams = CarParams()
    scope: DagScope = DagScope.ALL
    entity_bytes: EntityBytes | None = None
    explicit_format: bool = False  # the ``format`` query parameter chose it

    @property
    def content_path(self) -> str:
        return "/ipfs/" + "/".join((str(self.root), *self.segments))

    def etag(self, terminal: CID) -> str:
        """A strong Etag unique to the response's bytes (scope, range and CAR variant included)."""
        if self.format is ResponseFormat.RAW:
            return f'"{terminal}.raw"'
        if self.format is ResponseFormat.CAR:
            key = "\n".join(
                (self.content_path, self.scope.value, str(self.entity_bytes), self.car.content_type)
            )
            return f'"{terminal}.car.{hashlib.sha256(key.encode()).hexdigest()[:16]}"'
        return f'"{terminal}"'


# --- content path ---------------------------------------------------------------------------


def parse_content_path(path: str) -> tuple[CID, tuple[str, ...]]:
    """``<cid>[/seg/...]`` (what follows ``/ipfs/``, percent-encoded) -> (root CID, decoded segments)."""
    parts = path.split("/")
    try:
        root = CID.parse(unquote(parts[0]))
    except CIDError as exc:
        raise BadRequest(f"invalid CID {parts[0][:120]!r}: {exc}") from None
    segments = tuple(unquote(part) for part in parts[1:] if part)
    if len(segments) > MAX_PATH_SEGMENTS:
        raise BadRequest(f"content path has more than {MAX_PATH_SEGMENTS} segments")
    for segment in segments:
        if segment in (".", "..") or "/" in segment or "\x00" in segment:
            raise BadRequest(f"invalid path segment {segment[:120]!r}")
    return root, segments


# --- Accept negotiation ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaRange:
    type: str
    params: dict[str, str]
    q: float


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header, highest ``q`` first (stable for ties), ``q=0`` dropped."""
    ranges: list[MediaRange] = []
    for part in header.split(","):
        pieces = [piece.strip() for piece in part.split(";")]
        kind = pieces[0].lower()
        if not kind:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, sep, value = piece.partition("=")
            if not sep:
                continue
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
            else:
                params[name] = value.lower()
        if q > 0:
            ranges.append(MediaRange(kind, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _car_params(version: str | None, order: str | None, dups: str | None) -> CarParams | None:
    """CAR parameters this gateway can honour, or None: version 1, order dfs (or unk), dups y or n."""
    if version not in (None, "", "1"):
        return None
    if order not in (None, "", "dfs", "unk"):
        return None
    if dups not in (None, "", "y", "n"):
        return None
    return CarParams(1, "dfs", dups == "y")


def _media_car_params(media: MediaRange) -> CarParams | None:
    return _car_params(media.params.get("version"), media.params.get("order"), media.params.get("dups"))


def negotiate(accept: str | None) -> tuple[ResponseFormat, CarParams]:
    """The response format for an Accept header (no header: deserialized content for a browser)."""
    if not accept or not accept.strip():
        return ResponseFormat.DESERIALIZED, CarParams()
    unsupported: list[str] = []
    for media in parse_accept(accept):
        if media.type == RAW_TYPE:
            return ResponseFormat.RAW, CarParams()
        if media.type == CAR_TYPE:
            params = _media_car_params(media)
            if params is not None:
                return ResponseFormat.CAR, params
            continue
        if media.type == "application/json":
            return ResponseFormat.JSON_LISTING, CarParams()
        if media.type in _BROWSER_TYPES:
            return ResponseFormat.DESERIALIZED, CarParams()
        if media.type in _UNSUPPORTED_TYPES:
            unsupported.append(media.type)
    if unsupported:
        raise NotImplementedByGateway(f"response type {unsupported[0]} is not supported by this gateway")
    raise NotAcceptable(f"none of the accepted types can be served: {accept[:200]}")


# --- query parameters -----------------------------------------------------------------------

_ENTITY_BYTES_RE: Final = re.compile(r"(-?\d{1,19}):(\*|-?\d{1,19})")


def parse_entity_bytes(value: str) -> EntityBytes:
    match = _ENTITY_BYTES_RE.fullmatch(value)
    if match is None:
        raise BadRequest(f"invalid entity-bytes {value[:100]!r}: expected from:to")
    start = int(match.group(1))
    end = None if match.group(2) == "*" else int(match.group(2))
    if end is not None and start >= 0 and end >= 0 and end < start:
        raise BadRequest(f"invalid entity-bytes {value!r}: to is before from")
    if end is not None and start < 0 and end < 0 and end < start:
        raise BadRequest(f"invalid entity-bytes {value!r}: to is before from")
    return EntityBytes(start, end)


def parse_dag_scope(value: str) -> DagScope:
    try:
        return DagScope(value)
    except ValueError:
        raise BadRequest(f"invalid dag-scope {value[:100]!r}: expected block, entity or all") from None


def parse_request(path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> GatewayRequest:
    """Everything the handler needs to answer ``GET|HEAD /ipfs/<path>?<query>``.

    ``format`` takes precedence over Accept; CAR parameters come from ``car-version``/``car-order``/
    ``car-dups`` when given, else from the Accept entry. ``dag-scope`` and ``entity-bytes`` apply to CAR
    responses only (``entity-bytes`` implies ``dag-scope=entity``) and are ignored otherwise.
    """
    root, segments = parse_content_path(path)
    explicit = False
    format_param = query.get("format")
    accept = headers.get("accept")
    if format_param:
        explicit = True
        if format_param == "raw":
            fmt, car = ResponseFormat.RAW, CarParams()
        elif format_param == "car":
            fmt = ResponseFormat.CAR
            car = CarParams()
            if accept:
                for media in parse_accept(accept):
                    if media.type == CAR_TYPE:
                        found = _media_car_params(media)
                        if found is not None:
                            car = found
                            break
        elif format_param in UNSUPPORTED_FORMATS:
            raise NotImplementedByGateway(f"format={format_param} is not supported by this gateway")
        else:
            raise BadRequest(f"unknown format {format_param[:50]!r}")
    else:
        fmt, car = negotiate(accept)
    scope = DagScope.ALL
    entity_bytes = None
    if fmt is ResponseFormat.CAR:
        names = ("car-version", "car-order", "car-dups")
        if any(name in query for name in names):
            given = [query.get(name) for name in names]
            params = _car_params(*given)
            if params is None:
                raise BadRequest(f"unsupported CAR parameters {dict(zip(names, given, strict=True))}")
            if "car-dups" not in query:
                params = CarParams(params.version, params.order, car.dups)
            car = params
        if "dag-scope" in query:
            scope = parse_dag_scope(query["dag-scope"])
        if "entity-bytes" in query:
            entity_bytes = parse_entity_bytes(query["entity-bytes"])
            scope = DagScope.ENTITY
    return GatewayRequest(root, segments, fmt, car, scope, entity_bytes, explicit)

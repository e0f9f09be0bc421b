"""Value records (GET_VALUE / PUT_VALUE): validators by namespace, the ``pk`` validator, and the record store.

A record key is ``/<namespace>/<rest>`` and is handled only when a validator for its namespace was
given to the node (``pk`` always; ``ipns`` by the app): records of any other namespace are refused,
as the spec asks. A validator has ``validate(key, value)``, raising on a bad record (any
exception counts as invalid), and ``select(key, values) -> int``, the index of the best value.

The store (keyspace ``dht.records``: key -> the protobuf ``Record`` with its ``timeReceived``)
keeps one record per key, replaced only by a better one (``select``), at most ``max_records``
records, and serves a record for at most ``max_age`` after it arrived (36 h, as Kubo).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from ipfsreg.blockstore import Datastore
from ipfsreg.node.errors import DHTProtocolError, InvalidRecord
from ipfsreg.node.routing.message import Record, decode_record, encode_record

MAX_RECORD_AGE: Final = 36 * 3600.0
MAX_RECORDS: Final = 10_000
PK_NAMESPACE: Final = "pk"


class Validator(Protocol):
    def validate(self, key: bytes, value: bytes) -> None: ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int: ...


def namespace_of(key: bytes) -> str:
    """``pk`` for ``/pk/...``; InvalidRecord for a key with no namespace."""
    if not key.startswith(b"/"):
        raise InvalidRecord("record key does not start with /<namespace>/")
    namespace, sep, rest = key[1:].partition(b"/")
    if not sep or not namespace or not rest:
        raise InvalidRecord("record key is not /<namespace>/<name>")
    try:
        return namespace.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRecord("record key namespace is not ASCII") from None


class PublicKeyValidator:
    """``/pk/<peer ID bytes>`` -> the protobuf-serialized public key whose peer ID that is."""

    def validate(self, key: bytes, value: bytes) -> None:
        from libp2p.crypto.serialization import deserialize_public_key
        from libp2p.peer.id import ID

        prefix = b"/pk/"
        if not key.startswith(prefix) or len(key) == len(prefix):
            raise InvalidRecord("a pk record key must be /pk/<peer ID>")
        try:
            public_key = deserialize_public_key(value)
            derived = ID.from_pubkey(public_key).to_bytes()
        except Exception as exc:
            raise InvalidRecord(f"pk record value is not a public key: {exc}") from None
        if derived != key[len(prefix) :]:
            raise InvalidRecord("pk record: the public key does not match the peer ID in its key")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        # Every valid value for one key is the same key: any will do.
        if not values:
            raise InvalidRecord("no values to select from")
        return 0


class Validators:
    """Validators by namespace; ``pk`` is always present."""

    def __init__(self, extra: Mapping[str, Validator] | None = None) -> None:
        self._by_namespace: dict[str, Validator] = {PK_NAMESPACE: PublicKeyValidator()}
        self._by_namespace.update(extra or {})

    @property
    def namespaces(self) -> list[str]:
        return sorted(self._by_namespace)

    def check_namespace(self, key: bytes) -> None:
        """InvalidRecord unless ``key`` is ``/<namespace>/...`` of a namespace with a validator."""
        self._for(key)

    def _for(self, key: bytes) -> Validator:
        namespace = namespace_of(key)
        validator = self._by_namespace.get(namespace)
        if validator is None:
            raise InvalidRecord(f"no validator for records of namespace {namespace!r}")
        return validator

    def validate(self, key: bytes, value: bytes) -> None:
        validator = self._for(key)
        try:
            validator.validate(key, value)
        except InvalidRecord:
            raise
        except Exception as exc:
            raise InvalidRecord(f"invalid {namespace_of(key)} record: {exc}") from exc

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        validator = self._for(key)
        try:
            index = validator.select(key, values)
        except Exception as exc:
            raise InvalidRecord(f"cannot select among {namespace_of(key)} records: {exc}") from exc
        if not 0 <= index < len(values):
            raise InvalidRecord(f"the {namespace_of(key)} validator selected index {index} of {len(values)}")
        return index


def format_rfc3339(when: float) -> str:
    """Go's time.RFC3339Nano in UTC, as Kubo writes timeReceived."""
    moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond * 1000:09d}Z"


def parse_rfc3339(text: str) -> float | None:
    """An RFC 3339 timestamp (any fraction, Z or an offset) as unix time; None if unreadable."""
    text = text.strip()
    if not text:
        return None
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
        text = f"{head}.{fraction[:6].ljust(6, '0')}{zone}"
    text = text.replace("Z", "+00:00").replace("z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class RecordStore:
    def __init__(
        self,
        datastore: Datastore,
        validators: Validators,
        *,
        keyspace: str = "dht.records",
        max_records: int = MAX_RECORDS,
        max_age: float = MAX_RECORD_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyspace = datastore.keyspace(keyspace)
        self.validators = validators
        self.max_records = max_records
        self.max_age = max_age
        self.clock = clock
        self._count = sum(1 for _ in self.keyspace.keys(b""))

    def __len__(self) -> int:
        return self._count

    def put(self, key: bytes, value: bytes) -> bool:
        """Validate and store ``value``; True if stored, False if it is the one stored already.

        InvalidRecord if the record is invalid (or its namespace unknown), if the stored record is
        better (as Kubo refuses to replace a newer value with an older one), or the store is full.
        """
        self.validators.validate(key, value)
        existing = self._load(key)
        if existing is not None:
            try:
                self.validators.validate(key, existing.value)
            except InvalidRecord:
                existing = None  # expired or otherwise no longer valid: replace it
        if existing is not None:
            if existing.value == value:
                return False
            if self.validators.select(key, [value, existing.value]) != 0:
                raise InvalidRecord(f"a better {namespace_of(key)} record for this key is stored already")
        elif self.keyspace.get(key) is None and self._count >= self.max_records:
            raise InvalidRecord(f"the record store is full ({self.max_records} records)")
        fresh = self.keyspace.get(key) is None
        record = Record(key, value, format_rfc3339(self.clock()))
        self.keyspace.put(key, encode_record(record))
        if fresh:
            self._count += 1
        return True

    def get(self, key: bytes) -> Record | None:
        """The stored record for ``key`` if it is younger than ``max_age`` (not re-validated)."""
        record = self._load(key)
        if record is None:
            return None
        received = parse_rfc3339(record.time_received)
        if received is None or self.clock() - received > self.max_age:
            self.keyspace.delete(key)
            self._count = max(0, self._count - 1)
            return None
        return record

    def _load(self, key: bytes) -> Record | None:
        raw = self.keyspace.get(key)
        if raw is None:
            return None
        try:
            record = decode_record(raw)
        except DHTProtocolError:
            return None
        return record if record.key == key else None

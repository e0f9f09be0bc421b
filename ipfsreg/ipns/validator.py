"""The ``/ipns/`` record validator the node's DHT (and the Routing V1 API) checks records with.

It has the shape the node's value store takes per namespace::

    validate(key: bytes, value: bytes) -> None        # raises InvalidRecord / InvalidName
    select(key: bytes, values: Sequence[bytes]) -> int  # index of the best record

Keys are the binary routing keys ``/ipns/<multihash bytes>`` that Kubo and the spec use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from ipfsreg.ipns.record import IpnsError, IpnsName, IpnsRecord, compare, verify_record

NAMESPACE: Final = "ipns"


class IpnsValidator:
    """Validates and orders IPNS records stored under ``/ipns/<name>`` keys."""

    namespace: Final = NAMESPACE

    def __init__(self, clock_ns: Callable[[], int] | None = None) -> None:
        self._clock_ns = clock_ns

    def _now(self) -> int | None:
        return None if self._clock_ns is None else self._clock_ns()

    def verify(self, key: bytes, value: bytes) -> IpnsRecord:
        """The verified record (signature, consistency, not expired) of the name in ``key``."""
        return verify_record(value, IpnsName.from_routing_key(key), now_ns=self._now())

    def validate(self, key: bytes, value: bytes) -> None:
        self.verify(key, value)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """The best valid record's index; invalid ones never win. IpnsError if none is valid."""
        best: tuple[int, IpnsRecord] | None = None
        reasons: list[str] = []
        for index, value in enumerate(values):
            try:
                record = self.verify(key, value)
            except IpnsError as exc:
                reasons.append(str(exc))
                continue
            if best is None or compare(record, best[1]) > 0:
                best = (index, record)
        if best is None:
            detail = f": {reasons[0]}" if reasons else ""
            raise IpnsError(f"none of the {len(values)} records is valid{detail}")
        return best[0]

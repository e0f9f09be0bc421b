"""Check ipfsreg's IPNS verifier against the six test vectors of ipfs/specs ipns/ipns-record.md.

The vector files are public test data that this repository does not carry, so this is a check run by
hand, not a test (CI cross-checks records with js-libp2p's ``ipns`` package instead, in
interop/test_ipns_js.py)::

    .venv/bin/python interop/ipns_spec_vectors.py DIR

DIR holds the files as upstream names them (``<k51 name>_<case>.ipns-record``, e.g. from js-ipns's
``test/fixtures``). Exit status 0 when every vector verifies or is rejected as the spec says.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipfsreg.ipns.record import InvalidRecord, IpnsName, verify_record

CASES = {
    # case -> expected value, or None when the record must be rejected
    "v1": None,
    "v1-v2": "/ipfs/bafkqaddwgevxmmraojswg33smq",
    "v1-v2-broken-v1-value": None,
    "v1-v2-broken-signature-v2": None,
    "v1-v2-broken-signature-v1": "/ipfs/bafkqahtwgevxmmrao5uxi2bamjzg623fnyqhg2lhnzqxi5lsmuqhmmi",
    "v2": "/ipfs/bafkqadtwgiww63tmpeqhezldn5zgi",
}


def check_vector(path: Path, case: str) -> str | None:
    """None when the vector behaves as the spec says, else what went wrong."""
    name = IpnsName.parse(path.name.split("_", 1)[0])
    expected = CASES[case]
    try:
        record = verify_record(path.read_bytes(), name)
    except InvalidRecord as exc:
        return None if expected is None else f"rejected ({exc}), the spec accepts it"
    if expected is None:
        return f"accepted with value {record.value_text}, the spec rejects it"
    if record.value_text != expected or record.sequence != 0:
        return f"value {record.value_text} sequence {record.sequence}, expected {expected} sequence 0"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(argv[0])
    failures = 0
    for case in sorted(CASES):
        suffix = f"_{case}.ipns-record"
        found = [p for p in directory.glob("*" + suffix) if p.name.split("_", 1)[-1] == suffix[1:]]
        if len(found) != 1:
            print(f"{case}: {len(found)} files in {directory}, expected 1")
            failures += 1
            continue
        problem = check_vector(found[0], case)
        print(f"{case}: {'ok' if problem is None else problem}")
        failures += problem is not None
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

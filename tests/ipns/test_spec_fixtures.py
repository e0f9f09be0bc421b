"""The six test vectors of ipfs/specs ipns/ipns-record.md ("Test Vectors"), as js-ipns and boxo ship them.

The vector files are public test data that this repository does not carry: the test reads them from
``$IPFSREG_IPNS_FIXTURES`` or ``<checkout>/../shared/ipns-fixtures/`` (named as upstream names them,
``<k51 name>_<case>.ipns-record``) and is skipped when neither holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def fixture_dir() -> Path | None:
    candidates = [os.environ.get("IPFSREG_IPNS_FIXTURES", "")]
    candidates.append(str(Path(__file__).resolve().parents[2].parent / "shared" / "ipns-fixtures"))
    for candidate in candidates:
        if candidate and any(Path(candidate).glob("*.ipns-record")):
            return Path(candidate)
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_spec_vector_verifies_as_the_spec_says(case: str) -> None:
    directory = fixture_dir()
    if directory is None:
        pytest.skip("the spec's .ipns-record vectors are not present (set IPFSREG_IPNS_FIXTURES)")
    (path,) = [p for p in directory.glob("*.ipns-record") if p.name.split("_", 1)[1] == f"{case}.ipns-record"]
    name = IpnsName.parse(path.name.split("_", 1)[0])
    expected = CASES[case]
    if expected is None:
        with pytest.raises(InvalidRecord):
            verify_record(path.read_bytes(), name)
    else:
        record = verify_record(path.read_bytes(), name)
        assert record.value_text == expected
        assert record.sequence == 0

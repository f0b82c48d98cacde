"""receiver/model/osmos_body.py: an Osmos body read a slice at a time gives exactly what
`orjson.loads` of the whole body gives, or the same kind of refusal, for any body and any
slice size (property-based), and it counts records before the whole body is parsed."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from receiver.exceptions import InvalidRecords, PayloadError, TooManyRecords
from receiver.model.osmos_body import OsmosBody
from tests.support import examples

# Strings full of what a cutter could mistake for a record boundary.
TRICKY = st.text(alphabet=st.sampled_from(list('},{[]":\\ab \n\u2028é')), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TRICKY
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=8,
)
RECORDS = st.lists(st.dictionaries(TRICKY, VALUES, max_size=4) | VALUES, max_size=12)


def read(body: bytes, slice_bytes: int, max_records: int = 250_000) -> Any:
    """What the slicer makes of a body, twice over: (records, count) or the refusal's kind."""
    reader = OsmosBody(body, slice_bytes=slice_bytes, max_records=max_records)
    try:
        first = [record for _, records in reader.slices() for record in records]
    except TooManyRecords:
        return "too_many_records"
    except InvalidRecords:
        return "invalid_records"
    except PayloadError as exc:
        return exc.error_type
    again = [record for _, records in reader.slices() for record in records]
    assert again == first
    assert reader.count == len(first)
    return first


def whole(body: bytes) -> Any:
    """What parsing the whole body at once makes of it, in the same terms."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list):
        return parsed
    return "invalid_records"


def dump(records: list[Any], spaced: bool) -> bytes:
    if spaced:
        return json.dumps(records, indent=1, ensure_ascii=False).encode()
    return orjson.dumps(records)


@settings(max_examples=examples(300))
@given(records=RECORDS, slice_bytes=st.integers(1, 64), spaced=st.booleans())
@example(records=[{"a": "},{"}, {"b": [1, {"c": ","}]}], slice_bytes=1, spaced=False)
def test_slices_give_exactly_the_records_of_the_whole_body(records, slice_bytes, spaced):
    body = dump(records, spaced)
    assert read(body, slice_bytes) == orjson.loads(body)


@settings(max_examples=examples(300))
@given(
    records=RECORDS, slice_bytes=st.integers(1, 64), cut=st.integers(0, 10_000), junk=st.binary(max_size=3)
)
@example(records=[1], slice_bytes=1, cut=2, junk=b",")  # [1,]
@example(records=[1, 2], slice_bytes=1, cut=1, junk=b",")  # [,1,2]
def test_a_damaged_body_gets_the_answer_the_whole_body_would_get(records, slice_bytes, cut, junk):
    valid = dump(records, spaced=False)
    cut = cut % (len(valid) + 1)
    body = valid[:cut] + junk + valid[cut:]
    assert read(body, slice_bytes) == whole(body)


@pytest.mark.parametrize(
    "body, answer",
    [
        (b"[]", []),
        (b"  [ ]  ", []),
        (b'{"a": 1}', [{"a": 1}]),
        (b"[1,]", "invalid_json"),
        (b"[,1]", "invalid_json"),
        (b"[1] x", "invalid_json"),
        (b"", "invalid_json"),
        (b"42", "invalid_records"),
        (b'"text"', "invalid_records"),
    ],
)
def test_edge_bodies(body, answer):
    for slice_bytes in (1, 2, 1_048_576):
        assert read(body, slice_bytes) == answer


@given(count=st.integers(0, 40), limit=st.integers(0, 40), slice_bytes=st.integers(1, 30))
def test_the_record_limit_is_kept_for_any_slicing(count, limit, slice_bytes):
    body = orjson.dumps([{"n": i} for i in range(count)])
    answer = read(body, slice_bytes, max_records=limit)
    assert answer == ("too_many_records" if count > limit else [{"n": i} for i in range(count)])


def test_too_many_records_are_refused_before_the_rest_of_the_body_is_parsed():
    # The first slice already holds more records than the limit; what follows is not JSON.
    body = b"[" + b",".join([b"{}"] * 1_000) + b"," + b"not json at all" * 100 + b"]"
    reader = OsmosBody(body, slice_bytes=100, max_records=50)
    with pytest.raises(TooManyRecords):
        for _ in reader.slices():
            pass
    assert 50 < reader.count < 1_000

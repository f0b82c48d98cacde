"""A cheap, strict `osma-signature` parse: a header over `MAX_HEADER_BYTES`, or with more
than `MAX_V1_ENTRIES` `v1` entries, is `malformed_signature` at the syntax step, so it never
reaches the timestamp check or any HMAC (docs/contract.md, "Errors")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.exceptions import VerificationError
from receiver.model.signature import MAX_HEADER_BYTES, MAX_V1_ENTRIES, SignatureVerifier, parse_header, sign
from receiver.settings import Secret
from tests.support import examples

SECRET = "whsec_bounds_0123456789"
NOW = 1_700_000_000
BODY = b'{"id": "evt_1", "type": "task.completed"}'
STALE = NOW - 100_000

bounded = settings(max_examples=examples(200), deadline=None)


def verify(header: str | bytes, now: float = NOW) -> int:
    return SignatureVerifier([Secret(SECRET)], 300).verify(BODY, header, now)


def error_type(header: str | bytes, now: float = NOW) -> str:
    with pytest.raises(VerificationError) as caught:
        verify(header, now)
    return caught.value.error_type


def valid() -> str:
    return sign(BODY, SECRET, NOW)


def padded(header: str, size: int) -> str:
    """`header` followed by `v0=` entries (ignored by the scheme) up to exactly `size` bytes."""
    filler = size - len(header) - len(",v0=")
    assert filler >= 0
    return f"{header},v0={'a' * filler}"


def test_the_bounds_are_small_and_leave_room_for_a_rotation() -> None:
    assert MAX_HEADER_BYTES == 8192
    assert 2 <= MAX_V1_ENTRIES <= 16


def test_a_valid_header_at_the_size_bound_is_accepted() -> None:
    header = padded(valid(), MAX_HEADER_BYTES)
    assert len(header) == MAX_HEADER_BYTES
    assert verify(header) == NOW
    assert verify(header.encode()) == NOW


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 64 * 1024, 8 * 1024 * 1024])
def test_a_header_over_the_size_bound_is_malformed_even_with_a_valid_signature(size: int) -> None:
    header = padded(valid(), size)
    assert error_type(header) == "malformed_signature"
    assert error_type(header.encode()) == "malformed_signature"


def test_an_oversized_header_is_refused_before_the_timestamp_check() -> None:
    # Stale and oversized: the syntax step answers, so no later step (or HMAC) ran.
    header = padded(sign(BODY, SECRET, STALE), MAX_HEADER_BYTES + 1)
    assert error_type(header) == "malformed_signature"


def test_an_oversized_header_of_blanks_is_malformed_not_missing() -> None:
    assert error_type(" " * (MAX_HEADER_BYTES + 1)) == "missing_signature"
    assert error_type(b"t=1," + b" " * MAX_HEADER_BYTES) == "malformed_signature"


def test_up_to_the_entry_bound_of_v1_entries_one_match_is_enough() -> None:
    wrong = [f"v1={'0' * 64}"] * (MAX_V1_ENTRIES - 1)
    header = ",".join([valid(), *wrong])
    assert header.count("v1=") == MAX_V1_ENTRIES
    assert verify(header) == NOW


def test_one_v1_entry_more_than_the_bound_is_malformed() -> None:
    wrong = [f"v1={'0' * 64}"] * MAX_V1_ENTRIES
    header = ",".join([valid(), *wrong])
    assert error_type(header) == "malformed_signature"
    # stale too: still the syntax step that answers
    stale = ",".join([sign(BODY, SECRET, STALE), *wrong])
    assert error_type(stale) == "malformed_signature"


def test_many_entries_of_other_schemes_do_not_count_towards_the_v1_bound() -> None:
    others = [f"v0={'b' * 8}"] * (MAX_V1_ENTRIES * 4)
    assert verify(",".join([valid(), *others])) == NOW


# --- properties ---------------------------------------------------------------------------

entries = st.one_of(
    st.builds(lambda v: f"v1={v}", st.text("0123456789abcdef", min_size=1, max_size=64)),
    st.builds(lambda v: f"v0={v}", st.text("0123456789abcdef", min_size=1, max_size=64)),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["x", "V1", "v2"]), st.text(min_size=1, max_size=8)),
).filter(lambda entry: "," not in entry)


@bounded
@given(extra=st.lists(entries, max_size=40), position=st.integers(min_value=0, max_value=40))
def test_property_the_outcome_follows_the_size_and_v1_count_alone(extra: list[str], position: int) -> None:
    parts = [f"t={NOW}", *extra]
    parts.insert(min(position, len(parts)), valid().split(",")[1])  # the matching v1
    header = ",".join(parts)
    v1_count = sum(part.startswith("v1=") for part in parts)
    if len(header.encode()) > MAX_HEADER_BYTES or v1_count > MAX_V1_ENTRIES:
        assert error_type(header) == "malformed_signature"
    else:
        assert verify(header) == NOW
        assert len(parse_header(header).signatures) == v1_count


@bounded
@given(
    junk=st.binary(max_size=256).filter(lambda b: b"," not in b),
    size=st.integers(min_value=MAX_HEADER_BYTES + 1, max_value=4 * MAX_HEADER_BYTES),
    skew=st.integers(min_value=-300, max_value=300),
)
def test_property_a_valid_signature_over_the_bound_is_malformed(junk: bytes, size: int, skew: int) -> None:
    """Whatever fills the header past the bound, a signature that would verify does not count."""
    header = (sign(BODY, SECRET, NOW).encode() + b",v0=" + junk + b"a" * size)[:size]
    with pytest.raises(VerificationError) as caught:
        parse_header(header)
    assert caught.value.error_type == "malformed_signature"
    assert error_type(header, NOW + skew) == "malformed_signature"
    assert error_type(header.decode("latin-1"), NOW + skew) == "malformed_signature"

"""The `osma-signature` header, as docs/contract.md pins it.

`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`, checked on the raw
bytes, every failure a 401 `VerificationError` naming its reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.exceptions import RouterError, VerificationError
from receiver.model.signature import SignatureVerifier, parse_header, sign, verify_signature
from receiver.settings import Secret
from tests.support import examples

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_old_0123456789abcdef"
NOW = 1_700_000_000
BODY = b'{"id": "evt_1", "type": "task.completed", "data": {"object": {"id": "tsk_1"}}}'

bounded = settings(max_examples=examples(250), deadline=None)


def hmac_hex(secret: str, timestamp: int | str, body: bytes) -> str:
    """The signature computed independently of the code under test."""
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verifier(*secrets: str, tolerance: int = 300) -> SignatureVerifier:
    return SignatureVerifier([Secret(s) for s in (secrets or (SECRET,))], tolerance)


def rejection(
    header: str | bytes | None, body: bytes = BODY, now: float = NOW, **kw: int
) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verifier(**kw).verify(body, header, now=now)
    assert caught.value.status_code == 401
    return caught.value


# --- the format ---------------------------------------------------------------------------


def test_accepts_the_documented_format() -> None:
    header = f"t={NOW},v1={hmac_hex(SECRET, NOW, BODY)}"
    assert verifier().verify(BODY, header, now=NOW) == NOW


def test_accepts_the_header_as_bytes() -> None:
    header = f"t={NOW},v1={hmac_hex(SECRET, NOW, BODY)}".encode()
    assert verifier().verify(BODY, header, now=NOW) == NOW


def test_secret_is_used_as_its_utf8_bytes_not_decoded() -> None:
    secret = "whsec_dGVzdA==_ünïcødé"
    header = f"t={NOW},v1={hmac_hex(secret, NOW, BODY)}"
    assert verifier(secret).verify(BODY, header, now=NOW) == NOW


def test_sign_produces_the_documented_format() -> None:
    assert sign(BODY, SECRET, NOW) == f"t={NOW},v1={hmac_hex(SECRET, NOW, BODY)}"
    assert sign(BODY, Secret(SECRET), NOW) == sign(BODY, SECRET, NOW)


def test_sign_round_trips_with_verify() -> None:
    assert verifier().verify(BODY, sign(BODY, SECRET, NOW), now=NOW) == NOW
    assert verify_signature(BODY, sign(BODY, SECRET, NOW), [Secret(SECRET)], now=NOW) == NOW


def test_one_matching_v1_among_several_is_enough() -> None:
    good = hmac_hex(SECRET, NOW, BODY)
    bad = hmac_hex("some other secret", NOW, BODY)
    assert verifier().verify(BODY, f"t={NOW},v1={bad},v1={good}", now=NOW) == NOW
    assert verifier().verify(BODY, f"t={NOW},v1={good},v1={bad}", now=NOW) == NOW


def test_other_schemes_are_ignored() -> None:
    good = hmac_hex(SECRET, NOW, BODY)
    header = f"v0=deadbeef,t={NOW},v2=whatever,v1={good},scheme=x"
    assert verifier().verify(BODY, header, now=NOW) == NOW


def test_a_matching_v0_does_not_count_as_v1() -> None:
    good = hmac_hex(SECRET, NOW, BODY)
    error = rejection(f"t={NOW},v0={good},v1={'0' * 64}")
    assert error.error_type == "signature_mismatch"


def test_any_configured_secret_may_match_during_rotation() -> None:
    both = verifier(SECRET, OLD_SECRET)
    assert both.verify(BODY, sign(BODY, SECRET, NOW), now=NOW) == NOW
    assert both.verify(BODY, sign(BODY, OLD_SECRET, NOW), now=NOW) == NOW


def test_sender_signing_with_old_and_new_secret_matches_either_side() -> None:
    header = f"t={NOW},v1={hmac_hex(OLD_SECRET, NOW, BODY)},v1={hmac_hex(SECRET, NOW, BODY)}"
    assert verifier(SECRET).verify(BODY, header, now=NOW) == NOW
    assert verifier(OLD_SECRET).verify(BODY, header, now=NOW) == NOW


def test_spaces_around_entries_are_ignored() -> None:
    good = hmac_hex(SECRET, NOW, BODY)
    assert verifier().verify(BODY, f"  t={NOW} ,   v1={good}  ", now=NOW) == NOW
    assert verifier().verify(BODY, f"t={NOW}, v1={good}", now=NOW) == NOW


# --- tolerance ----------------------------------------------------------------------------


# The receiver's clock is read in whole seconds, as `t` is written: at NOW + 300.5 it is
# second NOW + 300 (exactly the tolerance: accepted), at NOW - 300.5 second NOW - 301.
@pytest.mark.parametrize("offset", [0, 1, 299, 300, -1, -299, -300, 300.5, 300.999, -299.5])
def test_timestamps_within_the_tolerance_are_accepted(offset: float) -> None:
    assert verifier().verify(BODY, sign(BODY, SECRET, NOW), now=NOW + offset) == NOW


@given(now=st.floats(min_value=1e9, max_value=4e9), offset=st.integers(-600, 600))
def test_exactly_the_tolerance_is_accepted_whatever_the_fraction_of_the_clock(
    now: float, offset: int
) -> None:
    """A sender writes `t = int(time.time()) - 300` and the receiver's clock has a fraction:
    it is still exactly the tolerance."""
    timestamp = math.floor(now) + offset
    header = sign(BODY, SECRET, timestamp)
    if abs(offset) <= 300:
        assert verifier().verify(BODY, header, now=now) == timestamp
    else:
        assert rejection(header, now=now).error_type == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("offset", [301, -301, 301.5, -300.5, 86_400, -86_400])
def test_timestamps_beyond_the_tolerance_are_rejected_both_ways(offset: float) -> None:
    error = rejection(sign(BODY, SECRET, NOW), now=NOW + offset)
    assert error.error_type == "timestamp_out_of_tolerance"


def test_tolerance_is_configurable() -> None:
    header = sign(BODY, SECRET, NOW)
    assert verifier(tolerance=10).verify(BODY, header, now=NOW + 10) == NOW
    assert rejection(header, now=NOW + 11, tolerance=10).error_type == "timestamp_out_of_tolerance"
    assert rejection(header, now=NOW - 11, tolerance=10).error_type == "timestamp_out_of_tolerance"


def test_an_absurdly_large_timestamp_is_out_of_tolerance_not_a_crash() -> None:
    big = "9" * 400
    error = rejection(f"t={big},v1={hmac_hex(SECRET, big, BODY)}")
    assert error.error_type == "timestamp_out_of_tolerance"
    assert rejection(f"t=-{big},v1=abc").error_type == "timestamp_out_of_tolerance"


# --- failures and their reasons -----------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", b"", "   ", b" \t "])
def test_missing_or_empty_header_is_missing_signature(header: str | bytes | None) -> None:
    assert rejection(header).error_type == "missing_signature"


@pytest.mark.parametrize(
    "header",
    [
        f"v1={'a' * 64}",  # no t=
        f"t=,v1={'a' * 64}",  # t empty
        f"t=abc,v1={'a' * 64}",  # t not an integer
        f"t=1700000000.5,v1={'a' * 64}",  # t not an integer
        f"t=1e9,v1={'a' * 64}",
        f"t={NOW}",  # no v1=
        f"t={NOW},v0={'a' * 64}",  # only another scheme
        f"t={NOW},V1={'a' * 64}",  # keys are case-sensitive
        f"T={NOW},v1={'a' * 64}",
        f"t={NOW},v1=",  # empty v1 value
        f"t={NOW},v1=,v1=",
        "garbage",
        "t",
        ",,,",
    ],
)
def test_malformed_headers(header: str) -> None:
    assert rejection(header).error_type == "malformed_signature"


def test_uppercase_v1_key_does_not_count_even_with_a_valid_digest() -> None:
    error = rejection(f"t={NOW},V1={hmac_hex(SECRET, NOW, BODY)}")
    assert error.error_type == "malformed_signature"


@pytest.mark.parametrize("value", ["zz", "not-hex-at-all", "g" * 64, "é", "0x" + "a" * 62])
def test_non_hex_v1_simply_does_not_match(value: str) -> None:
    assert rejection(f"t={NOW},v1={value}").error_type == "signature_mismatch"


def test_wrong_secret_is_signature_mismatch() -> None:
    assert rejection(sign(BODY, "whsec_wrong", NOW)).error_type == "signature_mismatch"


def test_signature_over_another_timestamp_is_mismatch() -> None:
    header = f"t={NOW},v1={hmac_hex(SECRET, NOW - 1, BODY)}"
    assert rejection(header).error_type == "signature_mismatch"


def test_reserialised_body_is_rejected() -> None:
    header = sign(BODY, SECRET, NOW)
    reserialised = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert reserialised != BODY and json.loads(reserialised) == json.loads(BODY)
    assert rejection(header, body=reserialised).error_type == "signature_mismatch"
    assert rejection(header, body=BODY + b"\n").error_type == "signature_mismatch"


def test_checks_run_in_the_documented_order() -> None:
    stale = NOW - 10_000
    # syntax before timestamp: a stale header without v1 is malformed
    assert rejection(f"t={stale}").error_type == "malformed_signature"
    # timestamp before signature: a stale header with a wrong signature is out of tolerance
    assert rejection(f"t={stale},v1={'0' * 64}").error_type == "timestamp_out_of_tolerance"


def test_verification_error_is_a_router_error_with_status_401() -> None:
    error = rejection(None)
    assert isinstance(error, RouterError)
    assert error.status_code == 401
    assert error.message


@pytest.mark.parametrize(
    "header, now",
    [
        (None, NOW),
        (f"t={NOW}", NOW),
        (f"t={NOW},v1={'0' * 64}", NOW),
        ("SECRET-IN-HEADER", NOW),
        (f"t={NOW},v1={hmac_hex(SECRET, NOW, BODY)}", NOW + 10_000),
    ],
)
def test_error_messages_never_contain_the_secret(header: str | None, now: int) -> None:
    if header == "SECRET-IN-HEADER":
        header = f"t={NOW},v1={SECRET}"
    with pytest.raises(VerificationError) as caught:
        verifier(SECRET, OLD_SECRET).verify(BODY, header, now=now)
    for text in (str(caught.value), caught.value.message, repr(caught.value)):
        assert SECRET not in text and OLD_SECRET not in text


def test_verifier_repr_masks_the_secrets() -> None:
    assert SECRET not in repr(verifier(SECRET, OLD_SECRET))


def test_parse_header_returns_timestamp_and_v1_signatures_only() -> None:
    parsed = parse_header("t=12, v0=aa, v1=bb ,v1=cc")
    assert parsed.timestamp == 12
    assert parsed.signatures == (b"bb", b"cc")


# --- properties ---------------------------------------------------------------------------

secrets_strategy = st.text(min_size=1, max_size=64)
timestamps = st.integers(min_value=0, max_value=10**11)


@bounded
@given(
    body=st.binary(max_size=2048),
    secret=secrets_strategy,
    timestamp=timestamps,
    skew=st.integers(min_value=-300, max_value=300),
)
def test_property_sign_then_verify_succeeds(body: bytes, secret: str, timestamp: int, skew: int) -> None:
    header = sign(body, secret, timestamp)
    assert verifier(secret).verify(body, header, now=timestamp + skew) == timestamp
    assert verifier("another secret " + secret, secret).verify(body, header, now=timestamp) == timestamp


header_pieces = st.sampled_from(
    [
        "t=",
        "v1=",
        "v0=",
        "V1=",
        "T=",
        "=",
        ",",
        " ",
        "-",
        "1700000000",
        "0",
        "abc",
        "deadbeef",
        "\x00",
        "é",
    ]
)
structured_headers = st.lists(
    st.one_of(header_pieces, st.text(max_size=8), st.integers().map(str)), max_size=12
).map("".join)


@bounded
@given(
    header=st.one_of(st.text(max_size=200), st.binary(max_size=200), structured_headers, st.none()),
    now=st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_property_arbitrary_headers_only_ever_raise_verification_error(
    header: str | bytes | None, now: float
) -> None:
    try:
        parse_header(header)
    except VerificationError as exc:
        assert exc.status_code == 401
        assert exc.error_type in {"missing_signature", "malformed_signature"}
    try:
        verifier().verify(BODY, header, now=now)
    except VerificationError as exc:
        assert exc.error_type in {
            "missing_signature",
            "malformed_signature",
            "timestamp_out_of_tolerance",
            "signature_mismatch",
        }


@bounded
@given(body=st.binary(min_size=1, max_size=1024), data=st.data())
def test_property_flipping_any_body_byte_breaks_the_signature(body: bytes, data: st.DataObject) -> None:
    header = sign(body, SECRET, NOW)
    position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    tampered = bytearray(body)
    tampered[position] ^= mask
    with pytest.raises(VerificationError) as caught:
        verifier().verify(bytes(tampered), header, now=NOW)
    assert caught.value.error_type == "signature_mismatch"

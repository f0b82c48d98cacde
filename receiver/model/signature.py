"""The `osma-signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.

Verification works on the raw body bytes, before anything parses them. Checks run in the
contract's order (docs/contract.md, "Errors": header present, syntax, timestamp, signature)
and every failure is a `VerificationError` whose `error_type` names the reason. No message
ever contains a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..exceptions import VerificationError
from ..settings import Secret

SCHEME = b"v1"
# A real header is under 100 bytes a signature: these bounds leave room for a rotation and
# make a hostile header cost no more to refuse than a normal one costs to check.
MAX_HEADER_BYTES = 8192
MAX_V1_ENTRIES = 8
_INTEGER = re.compile(rb"-?[0-9]+\Z")
# A timestamp with more digits than this is an integer, but astronomically far from now.
_MAX_TIMESTAMP_DIGITS = 18


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[bytes, ...]
    raw_timestamp: bytes = b""  # as written: it is what was signed


def parse_header(header: bytes | str | None) -> SignatureHeader:
    """Split the header into its timestamp and `v1` signatures; other schemes are ignored.

    A header over `MAX_HEADER_BYTES`, or with more than `MAX_V1_ENTRIES` `v1` entries, is
    malformed: refused here, before the timestamp check and any HMAC.
    """
    timestamp, signatures, raw_timestamp = _parse(header)
    return SignatureHeader(timestamp=timestamp, signatures=tuple(signatures), raw_timestamp=raw_timestamp)


def _parse(header: bytes | str | None) -> tuple[int, list[bytes], bytes]:
    """`parse_header` as a plain tuple (timestamp, signatures, timestamp as written): the
    receiver verifies every delivery with it, and a frozen dataclass costs a microsecond."""
    if isinstance(header, str):  # the receiver passes bytes; a str comes from tests and tools
        header = header.encode("latin-1", errors="replace")
    # isspace() stops at the first non-blank byte, and the length is known: both cost nothing.
    if not header or header.isspace():
        raise VerificationError("the osma-signature header is missing", error_type="missing_signature")
    if len(header) > MAX_HEADER_BYTES:
        raise _malformed(f"longer than {MAX_HEADER_BYTES} bytes")
    timestamp: bytes | None = None
    signatures: list[bytes] = []
    for entry in header.split(b","):
        key, sep, value = entry.strip().partition(b"=")
        if not sep or not key:
            raise _malformed("every entry must look like key=value")
        if key == b"t":
            if timestamp is not None:
                raise _malformed("more than one t= entry")
            timestamp = value
        elif key == SCHEME:
            if not value:
                raise _malformed("a v1= entry is empty")
            if len(signatures) == MAX_V1_ENTRIES:
                raise _malformed(f"more than {MAX_V1_ENTRIES} v1= entries")
            signatures.append(value)
    if timestamp is None:
        raise _malformed("no t= entry")
    # isdigit() on bytes is ASCII digits only: the usual case, without the regex.
    if not (timestamp.isdigit() or _INTEGER.match(timestamp)):
        raise _malformed("t= is not an integer number of seconds")
    if not signatures:
        raise _malformed("no v1= entry")
    digits = timestamp.lstrip(b"-")
    parsed = int(timestamp) if len(digits) <= _MAX_TIMESTAMP_DIGITS else _far_away(timestamp)
    return parsed, signatures, timestamp


def _far_away(timestamp: bytes) -> int:
    far: int = 10**_MAX_TIMESTAMP_DIGITS
    return -far if timestamp.startswith(b"-") else far


def _malformed(reason: str) -> VerificationError:
    return VerificationError(
        f"the osma-signature header is malformed: {reason}", error_type="malformed_signature"
    )


class SignatureVerifier:
    """Checks deliveries against one or more secrets; HMAC keys are prepared once."""

    def __init__(self, secrets: Sequence[Secret], tolerance: int) -> None:
        if not secrets:
            raise ValueError("at least one signing secret is needed")
        self._keys = [hmac.new(s.reveal().encode("utf-8"), digestmod=hashlib.sha256) for s in secrets]
        self.tolerance = tolerance

    def __repr__(self) -> str:
        return f"SignatureVerifier(secrets=<{len(self._keys)} masked>, tolerance={self.tolerance})"

    def verify(self, body: bytes, header: bytes | str | None, now: float) -> int:
        """Raise `VerificationError` unless `header` signs `body`; return the signed timestamp."""
        timestamp, signatures, raw_timestamp = _parse(header)
        # Whole seconds, as `t` is written: a sender's `t = int(time.time()) - 300` is exactly
        # the tolerance whatever fraction of a second the receiver's clock has reached.
        if abs(math.floor(now) - timestamp) > self.tolerance:
            raise VerificationError(
                f"the signature timestamp is more than {self.tolerance} s away from the receiver's clock",
                error_type="timestamp_out_of_tolerance",
            )
        signed = raw_timestamp + b"."
        for key in self._keys:
            mac = key.copy()
            mac.update(signed)
            mac.update(body)
            expected = mac.hexdigest().encode("ascii")
            if _any_matches(expected, signatures):
                return timestamp
        raise VerificationError(
            "no v1 signature matches a configured signing secret", error_type="signature_mismatch"
        )


def _any_matches(expected: bytes, candidates: Iterable[bytes]) -> bool:
    # Compare against every candidate, so the time taken does not tell which one matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(expected, candidate)
    return found


def verify_signature(
    body: bytes, header: bytes | str | None, secrets: Sequence[Secret], now: float, tolerance: int = 300
) -> int:
    """Verify one delivery; see `SignatureVerifier.verify`."""
    return SignatureVerifier(secrets, tolerance).verify(body, header, now)


def sign(body: bytes, secret: str | Secret, timestamp: int) -> str:
    """The header value Osma would send for `body` at `timestamp`."""
    key = secret.reveal() if isinstance(secret, Secret) else secret
    digest = hmac.new(key.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"

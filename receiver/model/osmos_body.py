"""Reading an Osmos body a slice at a time (docs/contract.md, "Osmos ingest").

A body is one JSON object (one record) or a JSON array of records. Parsing a 250,000-record
array in one go holds every record as Python objects at once (several times the body's
size), and an 8 MB body of `[{},{},...]` would become millions of objects before its
count could be refused. So an array is parsed in pieces of about `slice_bytes`: the
record count, and the record limit, are known slice by slice, and at most one slice of
records is held at a time. The pieces are remembered, so a second pass (storing, after
validation) parses the same pieces again without searching.

Why a cut is safe. The array is cut before a comma and each piece is parsed alone as
`[` + piece + `]`. If the piece starts at the first byte of an element, it parses only
when that comma is a top-level one: a comma inside a string leaves the string open, one
inside a nested value leaves a bracket open. A piece must hold at least one element, so
the pieces together are valid JSON exactly when each piece is (`[1,]` and `[,1]` fail as
they should). Cuts are tried where a `}` is followed by a comma (records are objects),
then at any comma; when a few candidates fail, the rest of the body is parsed in one
piece, so an invalid body still gets orjson's own error and an odd one is still read.

A consequence: a body with more than `max_records` elements is refused as such even if it
is not valid JSON further on (the count is checked before the whole body is parsed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from ..exceptions import PayloadError, TooManyRecords
from .connectors import MAX_RECORDS, RecordError, ValidationReport

SLICE_BYTES = 1_048_576  # about 8,000 records of the usual size per piece
CANDIDATES = 8  # cut positions tried per piece before the rest is parsed whole
_WHITESPACE = b" \t\n\r"
_RECORD_END = re.compile(rb"\}[ \t\n\r]*,")
_WHOLE = -1  # a piece that is the whole body (an object, or an array read in one go)
_REST = -2  # a piece that runs to the end of the body


def loads(data: bytes | bytearray) -> Any:
    """`orjson.loads`, with a failure as the 400 `invalid_json` answer."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the body is not valid JSON: {exc.msg}", error_type="invalid_json") from None


def shape_error() -> PayloadError:
    report = ValidationReport()
    report.add(RecordError(None, None, "the body must be a JSON object (one record) or an array of objects"))
    return report.rejection("the body is not a record or an array of records; nothing was stored")


class OsmosBody:
    """The records of one Osmos body, parsed a slice at a time; see the module docstring."""

    def __init__(
        self, body: bytes | bytearray, *, max_records: int = MAX_RECORDS, slice_bytes: int = SLICE_BYTES
    ) -> None:
        self.body = body
        self.max_records = max_records
        self.slice_bytes = slice_bytes
        self.count = 0  # records found so far (all of them after a full first pass)
        self._pieces: list[tuple[int, int]] | None = None  # (start, end) of each piece, once read

    def slices(self) -> Iterator[tuple[int, list[Any]]]:
        """`(index of the first record, records)` per piece, in order.

        The first pass finds the pieces and raises `PayloadError` (400 `invalid_json`),
        `TooManyRecords` (413) or the 422 for a body of the wrong shape as soon as it
        knows; later passes parse the same pieces again.
        """
        if self._pieces is None:
            return self._first_pass()
        return self._again(self._pieces)

    def _again(self, pieces: list[tuple[int, int]]) -> Iterator[tuple[int, list[Any]]]:
        offset = 0
        for start, end in pieces:
            records = self._parse(start, end)
            yield offset, records
            offset += len(records)

    def _first_pass(self) -> Iterator[tuple[int, list[Any]]]:
        body, pieces = self.body, []
        first = _first_byte(body)
        if first != ord("["):  # one record, or a body of the wrong shape
            records = self._parse(0, _WHOLE)
            self._pieces = [(0, _WHOLE)]
            yield 0, records
            return
        start = body.index(b"[") + 1
        while True:
            found = self._cut(start)
            if found is None:  # the rest, in one piece
                end, records = _REST, self._parse(start, _REST)
                if not records and self.count:  # `[..., ]`: a piece was cut before a last comma
                    raise _trailing_comma()
            else:
                end, records = found
            pieces.append((start, end))
            offset = self.count
            self._counted(len(records))
            yield offset, records
            if end == _REST:
                break
            start = end + 1
        self._pieces = pieces

    def _cut(self, start: int) -> tuple[int, list[Any]] | None:
        """The first top-level comma at least `slice_bytes` after `start` that makes a
        valid, non-empty piece, with the piece's records; None: parse the rest whole."""
        body = self.body
        target = start + self.slice_bytes
        if target >= len(body):
            return None
        tried = 0
        for match in _RECORD_END.finditer(body, target):
            comma = match.end() - 1
            records = self._try(start, comma)
            if records is not None:
                return comma, records
            tried += 1
            if tried >= CANDIDATES:
                return None
        comma = body.find(b",", target)  # elements that are not objects
        while comma != -1 and tried < CANDIDATES:
            records = self._try(start, comma)
            if records is not None:
                return comma, records
            tried += 1
            comma = body.find(b",", comma + 1)
        return None

    def _try(self, start: int, comma: int) -> list[Any] | None:
        try:
            parsed = orjson.loads(b"[" + self.body[start:comma] + b"]")
        except orjson.JSONDecodeError:
            return None
        return parsed if parsed else None

    def _parse(self, start: int, end: int) -> list[Any]:
        body = self.body
        if end == _WHOLE:
            parsed = loads(body)
            if isinstance(parsed, dict):
                if self._pieces is None:
                    self._counted(1)
                return [parsed]
            if isinstance(parsed, list):  # an array orjson reads but the cutter does not (a BOM)
                if self._pieces is None:
                    self._counted(len(parsed))
                return parsed
            raise shape_error()
        if end == _REST:
            parsed = loads(b"[" + body[start:])
        else:
            parsed = loads(b"[" + body[start:end] + b"]")
        return parsed  # type: ignore[no-any-return]

    def _counted(self, more: int) -> None:
        self.count += more
        if self.count > self.max_records:
            raise TooManyRecords(
                f"the batch holds more than {self.max_records} records; "
                f"at most {self.max_records} are accepted at once"
            )


def _first_byte(body: bytes | bytearray) -> int | None:
    for byte in body:
        if byte not in _WHITESPACE:
            return byte
    return None


def _trailing_comma() -> PayloadError:
    return PayloadError(
        "the body is not valid JSON: trailing comma is not allowed", error_type="invalid_json"
    )

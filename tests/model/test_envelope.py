"""parse_envelope: the verified body becomes a dict with string `id` and `type`, or a 400."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.exceptions import PayloadError, RouterError
from receiver.model.events import parse_envelope
from tests.support import examples

bounded = settings(max_examples=examples(300), deadline=None)


def payload_error(body: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse_envelope(body)
    assert caught.value.status_code == 400
    assert isinstance(caught.value, RouterError)
    return caught.value


def envelope_with(value: bytes) -> bytes:
    return b'{"id": "evt_1", "type": "task.completed", "data": {"object": {"n": ' + value + b"}}}"


def test_a_valid_envelope_is_returned_as_a_dict() -> None:
    body = json.dumps(
        {
            "id": "evt_1",
            "object": "event",
            "type": "task.completed",
            "created_at": "2022-07-19T15:03:02.991466+00:00",
            "live_mode": False,
            "data": {"object": {"id": "tsk_1", "template": "x"}},
        }
    ).encode()
    payload = parse_envelope(body)
    assert payload["id"] == "evt_1" and payload["type"] == "task.completed"
    assert payload["data"]["object"]["template"] == "x"


def test_only_id_and_type_are_required_and_unknown_types_pass() -> None:
    assert parse_envelope(b'{"id": "evt_2", "type": "something.new"}') == {
        "id": "evt_2",
        "type": "something.new",
    }


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not json",
        b"{",
        b'{"id": "evt_1", "type": "t",}',
        b"{'id': 'evt_1', 'type': 't'}",
        b'{"id": "evt_1", "type": "t"} trailing',
        b"\xff\xfe{}",
        b'{"id": "\xff", "type": "t"}',
        b'{"id": "\\ud800", "type": "t"}',
        b"NaN",
        b'{"id": "evt_1", "type": "t", "n": NaN}',
        b'{"id": "evt_1", "type": "t", "n": Infinity}',
    ],
)
def test_invalid_json(body: bytes) -> None:
    assert payload_error(body).error_type == "invalid_json"


@pytest.mark.parametrize(
    "body", [b"[]", b'[{"id": "evt_1", "type": "t"}]', b'"evt_1"', b"1", b"null", b"true"]
)
def test_non_object_is_invalid_json(body: bytes) -> None:
    assert payload_error(body).error_type == "invalid_json"


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_absurdly_deep_nesting_is_invalid_json(depth: int) -> None:
    assert payload_error(b"[" * depth + b"]" * depth).error_type == "invalid_json"
    nested = envelope_with(b"[" * depth + b"]" * depth)
    assert payload_error(nested).error_type == "invalid_json"
    objects = envelope_with(b'{"a":' * depth + b"1" + b"}" * depth)
    assert payload_error(objects).error_type == "invalid_json"


@pytest.mark.parametrize(
    "number",
    [
        b"1e999",
        b"-1e999",
        b"1" + b"0" * 5000,
        b"-" + b"9" * 5000,
        b"9" * 400,
        b"1" + b"0" * 5000 + b".5",
    ],
)
def test_numbers_too_long_to_parse_are_invalid_json(number: bytes) -> None:
    assert payload_error(envelope_with(number)).error_type == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"type": "task.completed"}',
        b'{"id": "evt_1"}',
        b'{"id": 123, "type": "task.completed"}',
        b'{"id": null, "type": "task.completed"}',
        b'{"id": ["evt_1"], "type": "task.completed"}',
        b'{"id": {"v": "evt_1"}, "type": "task.completed"}',
        b'{"id": "evt_1", "type": 5}',
        b'{"id": "evt_1", "type": true}',
        b'{"id": "evt_1", "type": null}',
        b'{"id": "evt_1", "type": ["task.completed"]}',
        b'{"ID": "evt_1", "TYPE": "task.completed"}',
    ],
)
def test_missing_or_non_string_id_or_type_is_invalid_envelope(body: bytes) -> None:
    assert payload_error(body).error_type == "invalid_envelope"


def test_error_message_does_not_echo_the_body() -> None:
    error = payload_error(b'{"id": 1, "type": "t", "data": {"object": {"name": "Jane Patient"}}}')
    assert "Jane Patient" not in str(error)


# --- properties ---------------------------------------------------------------------------


@bounded
@given(body=st.binary(max_size=2048))
def test_property_arbitrary_bytes_only_ever_raise_payload_error(body: bytes) -> None:
    try:
        payload = parse_envelope(body)
    except PayloadError as exc:
        assert exc.error_type in {"invalid_json", "invalid_envelope"}
        assert exc.status_code == 400
    else:
        assert isinstance(payload, dict)
        assert isinstance(payload["id"], str) and isinstance(payload["type"], str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
envelope_like = st.dictionaries(
    st.sampled_from(["id", "type", "data", "object", "created_at"]) | st.text(max_size=6),
    json_values,
    max_size=6,
)


@bounded
@given(document=st.one_of(json_values, envelope_like))
def test_property_arbitrary_json_only_ever_raises_payload_error(document: Any) -> None:
    body = json.dumps(document).encode()
    try:
        payload = parse_envelope(body)
    except PayloadError as exc:
        assert exc.error_type in {"invalid_json", "invalid_envelope"}
    else:
        assert isinstance(document, dict)
        assert isinstance(payload["id"], str) and isinstance(payload["type"], str)
        assert payload["id"] == document["id"] and payload["type"] == document["type"]

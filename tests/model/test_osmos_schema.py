"""Osmos connector configuration, the record validator (with Hypothesis properties) and
the record event id formula."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.exceptions import ConfigError
from receiver.model.connectors import (
    FIELD_TYPES,
    MAX_ERROR_ENTRIES,
    FieldSpec,
    RecordError,
    RecordValidator,
    parse_connectors,
    record_event_id,
)
from receiver.model.routes import load_config, parse_config
from tests.support import examples

ENV = {"CRM_TOKEN": "s3cret-token"}
GOOD = {
    "header": "Authorization",
    "token": "env:CRM_TOKEN",
    "event_type": "osmos.crm.record",
    "key": "customer_id",
    "fields": [
        {"name": "customer_id", "type": "string", "nullable": False},
        {"name": "visits", "type": "integer", "nullable": True},
    ],
}


def connector(**changes: Any) -> Any:
    table = {k: v for k, v in (GOOD | changes).items() if v is not None}
    return parse_connectors({"crm": table}, "routes.toml", ENV)["crm"]


# -- configuration -----------------------------------------------------------------------


def test_a_good_connector_is_parsed_and_its_token_never_shows():
    crm = connector()
    assert crm.name == "crm" and crm.header == "Authorization" and crm.header_key == b"authorization"
    assert crm.key == "customer_id" and crm.extra == "ignore"
    assert crm.fields == (FieldSpec("customer_id", "string", False), FieldSpec("visits", "integer", True))
    assert crm.authorized(b"s3cret-token") and not crm.authorized(b"s3cret-tokeN")
    assert not crm.authorized(None) and not crm.authorized(b"")
    for text in (repr(crm), str(crm), crm.describe()):
        assert "s3cret-token" not in text
    assert "CRM_TOKEN" in crm.describe()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"token": "s3cret-in-clear"}, '`token` must be "env:VARIABLE"'),
        ({"token": "env:UNSET_VAR"}, "UNSET_VAR is not set"),
        ({"token": "env:"}, "valid variable name"),
        ({"token": None}, "`token` must be"),
        ({"header": None}, "needs `header"),
        ({"header": "Bad Header"}, "needs `header"),
        ({"event_type": "osmos.*"}, "event_type"),
        ({"event_type": None}, "event_type"),
        ({"key": "nope"}, "`key` must name one of the connector's fields"),
        ({"extra": "drop"}, "`extra` must be"),
        ({"fields": []}, "needs `fields"),
        ({"fields": [{"name": "a", "type": "text"}]}, "`type` must be one of"),
        ({"fields": [{"name": "a", "type": "string", "nullable": "yes"}]}, "`nullable` must be"),
        ({"fields": [{"name": "a", "type": "string"}, {"name": "a", "type": "integer"}]}, "declared twice"),
        ({"fields": [{"name": "a", "type": "string", "max": 3}]}, "unknown key(s) max"),
        ({"fields": [{"type": "string"}]}, "non-empty `name`"),
        ({"schema": {}}, "unknown key(s) schema"),
    ],
)
def test_bad_connectors_are_config_errors_naming_the_file_and_connector(changes, expected):
    with pytest.raises(ConfigError) as caught:
        connector(**changes)
    message = str(caught.value)
    assert message.startswith("routes.toml: connector 'crm': ")
    assert expected in message and "s3cret" not in message


@pytest.mark.parametrize("name", ["bad name", "a" * 41, "crm.v2", ""])
def test_connector_names_must_fit_in_urls_and_ids(name):
    with pytest.raises(ConfigError, match="the name may hold only"):
        parse_connectors({name: GOOD}, "routes.toml", ENV)


def test_connectors_must_be_tables():
    with pytest.raises(ConfigError, match=r"\[connectors.NAME\]"):
        parse_connectors({"crm": "x"}, "routes.toml", ENV)


def test_the_routes_file_carries_connectors_and_reads_tokens_from_the_environment(
    tmp_path: Path, monkeypatch
):
    path = tmp_path / "osma-router.toml"
    path.write_text(
        '[connectors.crm]\nheader = "X-Key"\ntoken = "env:CRM_TOKEN"\n'
        'event_type = "osmos.crm.record"\nfields = [{ name = "id", type = "string" }]\n'
    )
    monkeypatch.delenv("CRM_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"{path}: connector 'crm': token: environment variable CRM_TOKEN"):
        load_config(path)
    (tmp_path / ".env").write_text("CRM_TOKEN=from-dotenv\n")
    assert load_config(path).connectors["crm"].authorized(b"from-dotenv")
    monkeypatch.setenv("CRM_TOKEN", "from-environment")  # the real environment wins
    assert load_config(path).connectors["crm"].authorized(b"from-environment")
    assert parse_config({"connectors": {"crm": GOOD}}, environ=ENV).connectors["crm"].token_env == "CRM_TOKEN"


# -- the validator -----------------------------------------------------------------------

SCHEMA = [
    FieldSpec("s", "string"),
    FieldSpec("i", "integer"),
    FieldSpec("n", "number"),
    FieldSpec("b", "boolean"),
    FieldSpec("d", "date"),
    FieldSpec("t", "datetime"),
    FieldSpec("maybe", "integer", nullable=True),
]


def errors_of(record: Any, fields: list[FieldSpec] = SCHEMA, reject: bool = False) -> list[tuple[Any, ...]]:
    report = RecordValidator(fields, reject_extra=reject).validate([record])
    return [(e.index, e.field) for e in report.errors]


def test_a_good_record_passes_and_nullable_fields_may_be_null_or_absent():
    good = {"s": "", "i": -3, "n": 2.5, "b": False, "d": "2024-02-29", "t": "2024-02-29T23:59:59.123+05:30"}
    assert errors_of(good) == []
    assert errors_of(good | {"maybe": None}) == errors_of(good | {"maybe": 7}) == []
    assert errors_of(good | {"n": 3}) == []  # number takes integers too


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("i", 1.0),
        ("i", 1e3),
        ("i", "1"),
        ("i", True),
        ("i", 2**64 * 1.0),
        ("n", "1"),
        ("n", False),
        ("b", 0),
        ("b", "false"),
        ("s", 1),
        ("s", {"a": 1}),
        ("d", "2024-2-9"),
        ("d", "2023-02-29"),
        ("d", "20240229"),
        ("d", "2024-W09-4"),
        ("d", "２０２４-02-29"),
        ("t", "2024-02-29T10:00"),
        ("t", "2024-02-29T10:00:00+25:00"),
        ("t", "2024-02-29 10:00:00Z"),
        ("t", "2024-02-29T10Z"),
        ("t", "2024-02-29T10:00:00+05"),
        ("t", "2024-02-29"),
        ("maybe", "7"),
    ],
)
def test_types_are_strict(field, value):
    good = {"s": "", "i": 1, "n": 1, "b": True, "d": "2024-02-29", "t": "2024-02-29T10:00:00Z"}
    assert errors_of(good | {field: value}) == [(0, field)]


def test_missing_and_null_required_fields_are_named():
    report = RecordValidator(SCHEMA).validate([{"s": None}])
    messages = {e.field: e.message for e in report.errors}
    assert list(messages) == ["s", "i", "n", "b", "d", "t"]
    assert "must not be null" in messages["s"] and messages["i"] == "required field is missing"


def test_unknown_fields_are_ignored_unless_rejected():
    record = {"s": "x", "other": 1, "more": None}
    assert errors_of(record, [FieldSpec("s", "string")]) == []
    assert errors_of(record, [FieldSpec("s", "string")], reject=True) == [(0, "other"), (0, "more")]


def test_the_report_keeps_the_first_entries_and_counts_the_rest():
    report = RecordValidator([FieldSpec("a", "string"), FieldSpec("b", "string")]).validate([{}] * 700)
    assert len(report.errors) == MAX_ERROR_ENTRIES and report.more == 400 and report.bad_records == 700
    assert report.errors[0] == RecordError(0, "a", "required field is missing")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
schemas = st.lists(
    st.builds(FieldSpec, st.text(min_size=1, max_size=6), st.sampled_from(FIELD_TYPES), st.booleans()),
    min_size=1,
    max_size=6,
    unique_by=lambda f: f.name,
)
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]
# One day in from each end, so that every offset above still lands inside datetime's range in
# UTC; what the product does with the edges themselves is pinned in tests/model/test_edge_times.py.
INNER_DATETIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.sampled_from(OFFSETS)
)


def valid_value(kind: str) -> st.SearchStrategy[Any]:
    return {
        "string": st.text(max_size=30),
        "integer": st.integers(-(2**63), 2**63 - 1),
        "number": st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False),
        "boolean": st.booleans(),
        "date": st.dates().map(lambda d: d.isoformat()),
        "datetime": INNER_DATETIMES.flatmap(
            lambda t: st.sampled_from(
                [
                    t.isoformat(),
                    t.isoformat(timespec="seconds"),
                    t.isoformat(timespec="minutes"),
                    t.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                ]
            )
        ),
    }[kind]


@st.composite
def schema_and_valid_record(draw: st.DrawFn) -> tuple[list[FieldSpec], dict[str, Any]]:
    fields = draw(schemas)
    record: dict[str, Any] = {}
    for spec in fields:
        choice = draw(st.sampled_from(["value", "null", "absent"] if spec.nullable else ["value"]))
        if choice == "value":
            record[spec.name] = draw(valid_value(spec.type))
        elif choice == "null":
            record[spec.name] = None
    extra = draw(st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=3))
    record.update({k: v for k, v in extra.items() if k not in record and k not in {f.name for f in fields}})
    return fields, record


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(schemas, st.lists(json_values, max_size=5), st.booleans())
def test_the_validator_never_raises_and_names_only_known_places(fields, records, reject):
    report = RecordValidator(fields, reject_extra=reject).validate(records)
    names = {f.name for f in fields}
    for error in report.errors:
        assert isinstance(error, RecordError) and error.message
        assert 0 <= error.index < len(records)
        record = records[error.index]
        assert error.field is None and not isinstance(record, dict) or error.field in names | set(record)
    assert report.bad_records == len({e.index for e in report.errors})


@settings(max_examples=examples(300))
@given(schema_and_valid_record(), st.booleans())
def test_valid_generated_records_always_pass(schema_and_record, reject):
    fields, record = schema_and_record
    if reject:
        record = {k: v for k, v in record.items() if k in {f.name for f in fields}}
    assert RecordValidator(fields, reject_extra=reject).validate([record]).errors == []


# -- event ids ---------------------------------------------------------------------------

stdlib_values = st.recursive(  # floats left out: orjson and json write some (1e16) differently
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def stdlib_id(record: dict[str, Any], connector: str, key: str | None) -> str:
    def h(value: Any, **kw: Any) -> str:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, **kw)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    content = h(record, sort_keys=True)
    return f"osmos_{connector}_{h(record.get(key))}_{content}" if key else f"osmos_{connector}_{content}"


@settings(max_examples=examples(300))
@given(st.dictionaries(st.text(max_size=8), stdlib_values, max_size=6), st.booleans())
def test_event_ids_match_an_independent_computation(record, keyed):
    crm = connector(key=None) if not keyed else connector()
    assert record_event_id(crm, record) == stdlib_id(record, "crm", crm.key)


def test_event_id_examples():
    record = {"visits": 3, "customer_id": "cus_42"}
    canonical = b'{"customer_id":"cus_42","visits":3}'
    k = hashlib.sha256(b'"cus_42"').hexdigest()[:16]
    c = hashlib.sha256(canonical).hexdigest()[:16]
    assert record_event_id(connector(), record) == f"osmos_crm_{k}_{c}"
    assert record_event_id(connector(key=None), record) == f"osmos_crm_{c}"
    assert (
        record_event_id(connector(), {"customer_id": 42}).split("_")[2]
        == hashlib.sha256(b"42").hexdigest()[:16]
    )
    assert "cus_42" not in record_event_id(connector(), record)


def test_a_process_that_checks_no_osmos_request_loads_connectors_without_their_tokens():
    # Workers and operator commands are not handed the Osmos tokens (deploy/ gives them to
    # the receiver only); the receiver itself still refuses to start without one.
    loaded = parse_config({"connectors": {"crm": GOOD}}, environ={}, tokens=False).connectors["crm"]
    assert loaded.token is None and loaded.token_env == "CRM_TOKEN"
    assert not loaded.authorized(b"") and not loaded.authorized(b"anything")
    assert "NOT SET" in loaded.describe()
    with pytest.raises(ConfigError, match="CRM_TOKEN is not set"):
        parse_config({"connectors": {"crm": GOOD}}, environ={})

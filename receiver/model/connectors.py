"""Osmos connectors: their configuration, their record schema, and record event ids.

```toml
[connectors.crm]                      # POST /ingest/osmos/crm
header = "Authorization"              # the header Osmos is configured to send
token = "env:CRM_OSMOS_TOKEN"         # its expected value, read from this environment variable
event_type = "osmos.crm.record"       # each record becomes an event of this type
key = "customer_id"                   # optional: the field that identifies a record
extra = "ignore"                      # or "reject": fields outside `fields` make a record bad
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "visits", type = "integer", nullable = true },
]
```

Types are strict (docs/contract.md, "Osmos ingest"): `integer` is a JSON integer, `number` an
integer or a float, `boolean` true/false, `date` `YYYY-MM-DD`, `datetime` ISO 8601 with an
offset or `Z`, `string` a JSON string. A nullable field may be null or absent. Unknown
fields are kept in the record as sent unless the connector rejects them.

A record's event id is `osmos_<connector>_<K>_<C>` (`osmos_<connector>_<C>` without `key`):
C and K are the first 16 hex digits of SHA-256 of the record's canonical JSON and of the
key field's value as compact JSON, so a re-sent record is a duplicate and no field value
shows in clear in an id. Without `key`, a row repeated in one batch is a row of its own:
its n-th copy takes C from the canonical JSON followed by `#n` (`RecordIds`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson

from ..exceptions import ConfigError, InvalidRecords
from ..settings import Secret

SOURCE = "osmos"
MAX_RECORDS = 250_000
MAX_ERROR_ENTRIES = 1_000
FIELD_TYPES = ("string", "integer", "number", "boolean", "date", "datetime")
CONNECTOR_KEYS = frozenset({"header", "token", "event_type", "key", "fields", "extra"})
FIELD_KEYS = frozenset({"name", "type", "nullable"})

# Names end up in URLs, event ids and RQ job ids (letters, digits, `_`, `-`; ids <= 100).
_CONNECTOR_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an RFC 9110 token
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:?[0-9]{2})\Z"
)
_MISSING: Any = object()

_JSON_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a non-integer number",
    bool: "a boolean",
    type(None): "null",
    list: "an array",
    dict: "an object",
}
_EXPECTED = {
    "string": "a string",
    "integer": "an integer (a JSON number without fraction or exponent, 64-bit)",
    "number": "a number",
    "boolean": "true or false",
    "date": "a date as YYYY-MM-DD",
    "datetime": "an ISO 8601 date-time with an offset or Z (e.g. 2024-05-01T12:00:00Z)",
}


def _is_date(value: str) -> bool:
    if not _DATE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    # The pattern pins the shape; fromisoformat (3.11) then checks ranges (month 13, 24:00).
    if not _DATETIME.match(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


# Per type: the Python types orjson gives for an acceptable value, and a further check.
_CHECKS: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None]] = {
    "string": ((str,), None),
    "integer": ((int,), None),
    "number": ((int, float), None),
    "boolean": ((bool,), None),
    "date": ((str,), _is_date),
    "datetime": ((str,), _is_datetime),
}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a connector's schema."""

    name: str
    type: str
    nullable: bool = False


@dataclass(frozen=True)
class RecordError:
    """One bad field of one record (`index` None: the body as a whole)."""

    index: int | None
    field: str | None
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


@dataclass
class ValidationReport:
    """The first `MAX_ERROR_ENTRIES` bad fields, and how many more there were."""

    errors: list[RecordError] = field(default_factory=list)
    more: int = 0
    bad_records: int = 0

    def add(self, error: RecordError) -> None:
        if len(self.errors) < MAX_ERROR_ENTRIES:
            self.errors.append(error)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.errors)

    def rejection(self, message: str) -> InvalidRecords:
        """The 422 that names these bad fields."""
        return InvalidRecords(message, [error.as_json() for error in self.errors], self.more)


@dataclass(frozen=True)
class Connector:
    """One `[connectors.NAME]` table, checked; the token never shows in a repr."""

    name: str
    header: str
    token: Secret | None  # None: loaded where no request is checked (a worker, a command)
    token_env: str
    event_type: str
    fields: tuple[FieldSpec, ...]
    key: str | None = None
    extra: str = "ignore"

    @property
    def path(self) -> str:
        return f"/ingest/osmos/{self.name}"

    @property
    def header_key(self) -> bytes:
        """The auth header's name as ASGI gives it (lower-case bytes)."""
        return self.header.lower().encode("latin-1")

    def authorized(self, value: bytes | None) -> bool:
        """Whether the auth header's value is the token (constant-time compare)."""
        if value is None or self.token is None:
            return False
        return hmac.compare_digest(value.strip(), self.token.reveal().encode("utf-8"))

    def describe(self) -> str:
        key = f", key {self.key}" if self.key else ""
        return (
            f"{self.name}: POST {self.path} -> {self.event_type} (header {self.header}: "
            f"{self.token or 'NOT SET'} from ${self.token_env}; {len(self.fields)} field(s){key}, "
            f"extra {self.extra})"
        )

    def validator(self) -> RecordValidator:
        return RecordValidator(self.fields, reject_extra=self.extra == "reject")

    def event_id_prefix(self) -> str:
        return f"{SOURCE}_{self.name}_"


class RecordValidator:
    """Checks records against a schema; built once per connector, fast on valid records."""

    def __init__(self, fields: Sequence[FieldSpec], *, reject_extra: bool = False) -> None:
        self.fields = tuple(fields)
        self.reject_extra = reject_extra
        self._names = frozenset(f.name for f in self.fields)
        self._plan = tuple((f.name, *_CHECKS[f.type], f.nullable, f.type) for f in self.fields)

    def check(self, index: int, record: Any, report: ValidationReport) -> bool:
        """Add the record's bad fields to `report`; True when it has none."""
        if type(record) is not dict:
            report.add(RecordError(index, None, f"a record must be a JSON object, got {_json_type(record)}"))
            report.bad_records += 1
            return False
        good = True
        get = record.get
        for name, allowed, further, nullable, kind in self._plan:
            value = get(name, _MISSING)
            if type(value) in allowed and (further is None or further(value)):
                continue
            if nullable and (value is None or value is _MISSING):
                continue
            good = False
            if value is _MISSING:
                report.add(RecordError(index, name, "required field is missing"))
            elif value is None:
                report.add(RecordError(index, name, "must not be null (the field is not nullable)"))
            elif type(value) in allowed:
                report.add(RecordError(index, name, f"must be {_EXPECTED[kind]}"))
            else:
                report.add(RecordError(index, name, f"must be {_EXPECTED[kind]}, got {_json_type(value)}"))
        if self.reject_extra:
            for name in record:
                if name not in self._names:
                    good = False
                    report.add(
                        RecordError(
                            index, name, "unknown field: this connector rejects fields outside its schema"
                        )
                    )
        if not good:
            report.bad_records += 1
        return good

    def validate(
        self,
        records: Sequence[Any],
        start: int = 0,
        stop: int | None = None,
        report: ValidationReport | None = None,
    ) -> ValidationReport:
        """Check `records[start:stop]`; every problem is in the report, nothing raises."""
        report = report if report is not None else ValidationReport()
        check = self.check
        for index in range(start, len(records) if stop is None else min(stop, len(records))):
            check(index, records[index], report)
        return report


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def short_hash(data: bytes) -> str:
    """h(x): the first 16 hex digits of SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Keys sorted, separators `,` and `:`, UTF-8, no ASCII escaping."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


class RecordIds:
    """Event ids and dedup marks of one connector's records (docs/contract.md, "Osmos ingest").

    A record's digest is its id in bytes: K and C (8 bytes each) with `key`, C alone
    without. The n-th identical copy of a record in one batch (n >= 2; only counted without
    `key`, see docs/osmos.md) takes C from the canonical JSON followed by `#n`.
    """

    def __init__(self, connector: str, key: str | None) -> None:
        self.prefix = f"{SOURCE}_{connector}_"
        self.key = key
        self.digest_size = 8 if key is None else 16

    def digest(self, record: Mapping[str, Any], canonical: bytes, occurrence: int = 1) -> bytes:
        content = canonical if occurrence == 1 else canonical + b"#%d" % occurrence
        c = hashlib.sha256(content).digest()[:8]
        if self.key is None:
            return c
        return hashlib.sha256(orjson.dumps(record.get(self.key))).digest()[:8] + c

    def event_id(self, digest: bytes) -> str:
        if self.key is None:
            return self.prefix + digest.hex()
        return self.prefix + digest[:8].hex() + "_" + digest[8:].hex()

    def digest_of(self, event_id: str) -> bytes | None:
        """`event_id`'s digest, or None when it is not one of these records' ids."""
        if not event_id.startswith(self.prefix):
            return None
        try:
            digest = bytes.fromhex(event_id.removeprefix(self.prefix).replace("_", ""))
        except ValueError:
            return None
        return digest if len(digest) == self.digest_size else None


def record_ids(connector: Connector) -> RecordIds:
    return RecordIds(connector.name, connector.key)


def record_event_id(connector: Connector, record: Mapping[str, Any], occurrence: int = 1) -> str:
    """`osmos_<connector>_<K>_<C>` with a key field, `osmos_<connector>_<C>` without."""
    ids = record_ids(connector)
    return ids.event_id(ids.digest(record, canonical_json(record), occurrence))


# -- configuration ---------------------------------------------------------------------


def process_environment(env_file: str | Path = ".env") -> dict[str, str]:
    """The environment tokens are read from: a `.env` file, overridden by the real one."""
    values: dict[str, str] = {}
    if Path(env_file).is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


def parse_connectors(
    tables: Any, where_: str, environ: Mapping[str, str] | None = None, *, tokens: bool = True
) -> dict[str, Connector]:
    """Check every `[connectors.NAME]` table; a problem is a `ConfigError` naming it.
    `tokens=False`: a token variable that is not set is no error (its `token` is None):
    for processes that never check an Osmos request, such as workers, which should not
    be handed the tokens at all."""
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ConfigError(f"{where_}: `connectors` must be tables like [connectors.NAME]")
    if not tables:
        return {}
    env = process_environment() if environ is None else environ
    return {name: _parse_connector(name, table, where_, env, tokens) for name, table in tables.items()}


def _parse_connector(
    name: str, table: Mapping[str, Any], where_: str, env: Mapping[str, str], tokens: bool
) -> Connector:
    label = f"{where_}: connector {name!r}"
    if not _CONNECTOR_NAME.match(name):
        raise ConfigError(f"{label}: the name may hold only letters, digits, '_' and '-' (at most 40)")
    unknown = set(table) - CONNECTOR_KEYS
    if unknown:
        raise ConfigError(
            f"{label}: unknown key(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(CONNECTOR_KEYS))})"
        )
    header = table.get("header")
    if not isinstance(header, str) or not _HEADER_NAME.match(header):
        raise ConfigError(f'{label}: needs `header = "<HTTP header name>"`, e.g. "Authorization"')
    token_env = _token_variable(table.get("token"), label)
    token = env.get(token_env, "").strip()
    if not token and tokens:
        raise ConfigError(f"{label}: token: environment variable {token_env} is not set (or empty)")
    event_type = table.get("event_type")
    if not isinstance(event_type, str) or not _EVENT_TYPE.match(event_type):
        raise ConfigError(f'{label}: needs `event_type = "<type>"`, e.g. "osmos.{name}.record"')
    fields = _parse_fields(table.get("fields"), label)
    key = table.get("key")
    if key is not None and (not isinstance(key, str) or key not in {f.name for f in fields}):
        raise ConfigError(f"{label}: `key` must name one of the connector's fields")
    extra = table.get("extra", "ignore")
    if extra not in ("ignore", "reject"):
        raise ConfigError(f'{label}: `extra` must be "ignore" or "reject"')
    return Connector(
        name=name,
        header=header,
        token=Secret(token) if token else None,
        token_env=token_env,
        event_type=event_type,
        fields=fields,
        key=key,
        extra=extra,
    )


def _token_variable(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value.startswith("env:"):
        # Never echo the value: it may be a token someone pasted in clear.
        raise ConfigError(
            f'{label}: `token` must be "env:VARIABLE" (the token is read from the '
            "environment, never written in the routes file)"
        )
    name = value[4:].strip()
    if not _ENV_NAME.match(name):
        raise ConfigError(f'{label}: `token` must be "env:VARIABLE" with a valid variable name')
    return name


def _parse_fields(value: Any, label: str) -> tuple[FieldSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f'{label}: needs `fields = [{{ name = "...", type = "string", nullable = false }}, ...]`'
        )
    fields: list[FieldSpec] = []
    for position, item in enumerate(value, start=1):
        where = f"{label}: field #{position}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table {{ name = ..., type = ..., nullable = ... }}")
        unknown = set(item) - FIELD_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name, kind, nullable = item.get("name"), item.get("type"), item.get("nullable", False)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: needs a non-empty `name`")
        if kind not in FIELD_TYPES:
            raise ConfigError(f"{where} ({name}): `type` must be one of {', '.join(FIELD_TYPES)}")
        if not isinstance(nullable, bool):
            raise ConfigError(f"{where} ({name}): `nullable` must be true or false")
        if any(f.name == name for f in fields):
            raise ConfigError(f"{where}: field {name!r} is declared twice")
        fields.append(FieldSpec(name, kind, nullable))
    return tuple(fields)

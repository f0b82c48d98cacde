"""The settings table: every setting the service reads, one row each, and `Settings`.

Every setting is one row of `_TABLE`, in the manner of Starlette's `config("KEY", cast=int, default=...)`:

    variable     the environment variable, without the `OSMA_ROUTER_` prefix
    field        the `Settings` attribute it fills
    parse        turns the stripped, non-empty text into the value, or raises `ConfigError`
    default      the value when the variable is unset or blank; `Settings()` takes it too
    show         how `check-config` prints the value: a format string, a function, or None to leave it out
    label=       the name `check-config` prints it under, when not the variable's name in lower case;
                 rows that share a label are printed on one line, joined by ", "
    when_unset=  computes the value of an unset variable at start-up, instead of `default`
    check=       a rule across settings, run once this row is read, on every value read so far

A default is written only in its row: the dataclass takes its field defaults from the table, so
`Settings()` and an empty environment agree by construction.

`Settings.from_env` reads the rows top to bottom and stops at the first bad value, so the order of the
table is the order problems are reported in. `Settings.summary()` lists the rows in the order `Settings`
declares its fields, which is the order `check-config` has always printed. The two orders differ only
for QUEUE: it is checked last, as it always was, so that a given environment still reports the same
first problem.

A missing or malformed value raises `ConfigError` with a one-line message that names the variable; the
CLI prints it and exits 1. The parsers, and `Secret`, whose `repr()` and `str()` never show the value,
are in `values.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .values import (
    DEFAULT_OSMA_API_VERSION,
    PREFIX,
    Secret,
    _api_version,
    _base_url,
    _budget_shown,
    _capture_needs_a_key,
    _count,
    _dedup_covers_the_replay_window,
    _entry_point_names,
    _fernet_keys,
    _integer,
    _joined_or,
    _log_format,
    _log_level,
    _login_token,
    _mode,
    _mode_agrees_with_the_key,
    _ogsm_action_body,
    _ogsm_base_url,
    _on_off,
    _or,
    _positive_number,
    _proxy_list,
    _queue_name,
    _redis,
    _redis_budget,
    _redis_url,
    _routes_file,
    _routes_file_if_present,
    _secret,
    _secret_list,
    _secrets,
    _switch,
    _text,
    key_mode,
)


@dataclass(frozen=True)
class _Row:
    """One setting; the module docstring describes the columns."""

    variable: str
    field: str
    parse: Callable[[str, str], Any]
    default: Any
    show: str | Callable[[Any], str] | None
    _: KW_ONLY
    label: str | None = None
    when_unset: Callable[[], Any] | None = None
    check: Callable[[Mapping[str, Any]], None] | None = None

    def read(self, env: Mapping[str, str]) -> Any:
        text = env.get(PREFIX + self.variable, "").strip()
        if text:
            return self.parse(self.variable, text)
        return self.when_unset() if self.when_unset is not None else self.default

    @property
    def key(self) -> str:
        return self.label or self.variable.lower()


_MIB = 1_048_576

# One row a line, wrapped by hand where it must be, reads as a table; the formatter would undo that.
# fmt: off
_TABLE: tuple[_Row, ...] = (
    _Row("REDIS_URL", "redis_url", _redis_url, None, _redis),
    _Row("WEBHOOK_SECRETS", "webhook_secrets", _secret_list, (), _secrets),
    _Row("SIGNATURE_TOLERANCE", "signature_tolerance", _integer(minimum=0), 300, "{} s"),
    _Row("DEDUP_TTL", "dedup_ttl", _positive_number, 259_200.0, "{:g} s",
         check=_dedup_covers_the_replay_window),
    _Row("MAX_BODY_BYTES", "max_body_bytes", _integer(minimum=1), _MIB, "{}"),
    _Row("OSMOS_MAX_BODY_BYTES", "osmos_max_body_bytes", _integer(minimum=1), 256 * _MIB, "{}"),
    # The Redis memory Osmos batches may fill up to (docs/osmos.md, "Redis memory budget").
    _Row("OSMOS_REDIS_BUDGET", "osmos_redis_budget", _redis_budget, "50%", _budget_shown),
    _Row("OSMA_API_KEY", "osma_api_key", _secret, None, _or("-")),
    _Row("OSMA_BASE_URL", "osma_base_url", _base_url, "https://api.osma.com", "{}"),
    _Row("OSMA_API_VERSION", "osma_api_version", _api_version, DEFAULT_OSMA_API_VERSION, "{}"),
    # Shown by check-config on a line of its own, with where the mode came from.
    _Row("MODE", "mode", _mode, None, None, check=_mode_agrees_with_the_key),
    _Row("HEARTBEAT_TTL", "heartbeat_ttl", _integer(minimum=3), 30, "{} s"),
    # Seconds a lock outlives its last renewal, and the bound within which an upstream is
    # assumed to finish a request (docs/contract.md): keep 60 for Osma and OGSM; tests lower it.
    _Row("LOCK_TTL", "lock_ttl", _integer(minimum=1), 60, "{} s"),
    _Row("OGSM_BASE_URL", "ogsm_base_url", _ogsm_base_url, None, _or("-")),
    _Row("OGSM_USERNAME", "ogsm_username", _text, None, _or("-")),
    _Row("OGSM_PASSWORD", "ogsm_password", _secret, None, _or("-")),
    # The body shape of OGSM action writes; the documents leave it open (docs/upstream.md, "OGSM client").
    _Row("OGSM_ACTION_BODY", "ogsm_action_body", _ogsm_action_body, "wrapped", None),
    _Row("CONFIG", "config_path", _routes_file, None, _or("- (no routes file)"),
         when_unset=_routes_file_if_present),
    _Row("CAPTURE", "capture", _switch, False, _on_off),
    _Row("CAPTURE_MAX_AGE", "capture_max_age", _positive_number, 604_800.0, "{:g} s",
         label="capture_retention"),
    _Row("CAPTURE_MAX_COUNT", "capture_max_count", _integer(minimum=1), 100_000, "at most {} deliveries",
         label="capture_retention"),
    _Row("ENCRYPTION_KEYS", "encryption_keys", _fernet_keys, (), _count, check=_capture_needs_a_key),
    _Row("LOG_FORMAT", "log_format", _log_format, "json", None),
    _Row("LOG_LEVEL", "log_level", _log_level, "info", None),
    _Row("TRUSTED_PROXIES", "trusted_proxies", _proxy_list, (), _joined_or("- (X-Forwarded-* ignored)")),
    _Row("SHUTDOWN_GRACE", "shutdown_grace", _positive_number, 25.0, "{:g} s"),
    _Row("BODY_TIMEOUT", "body_timeout", _positive_number, 10.0, "{:g} s"),
    # The HTTP edge of `serve`, per receiver process (receiver/web/edge.py).
    _Row("MAX_HEADER_BYTES", "max_header_bytes", _integer(minimum=1024), 16_384, "{}"),
    _Row("MAX_CONNECTIONS", "max_connections", _integer(minimum=1), 1000, "{} per receiver process"),
    _Row("HEADER_TIMEOUT", "header_timeout", _positive_number, 10.0, "{:g} s"),
    _Row("KEEPALIVE_TIMEOUT", "keepalive_timeout", _positive_number, 5.0, "{:g} s"),
    # Handler plugins to load, by entry point name; unset loads all. check-config lists them itself.
    _Row("PLUGINS", "plugins", _entry_point_names, None, None),
    _Row("QUEUE", "queue_name", _queue_name, "osma-router", "{}"),
    _Row("CONSOLE_TOKEN", "console_token", _login_token, None, _or("- (console: loopback only)")),
)
# fmt: on

VARIABLES: tuple[str, ...] = tuple(PREFIX + row.variable for row in _TABLE)  # every one the service reads
_ROW_FOR: dict[str, _Row] = {row.field: row for row in _TABLE}
_DEFAULT: dict[str, Any] = {row.field: row.default for row in _TABLE}


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, checked once; defaults live in `_TABLE`."""

    redis_url: str | None = field(default=_DEFAULT["redis_url"], repr=False)  # may carry a password
    webhook_secrets: tuple[Secret, ...] = _DEFAULT["webhook_secrets"]
    signature_tolerance: int = _DEFAULT["signature_tolerance"]
    dedup_ttl: float = _DEFAULT["dedup_ttl"]
    max_body_bytes: int = _DEFAULT["max_body_bytes"]
    osmos_max_body_bytes: int = _DEFAULT["osmos_max_body_bytes"]
    osmos_redis_budget: str = _DEFAULT["osmos_redis_budget"]
    queue_name: str = _DEFAULT["queue_name"]
    osma_api_key: Secret | None = _DEFAULT["osma_api_key"]
    osma_base_url: str = _DEFAULT["osma_base_url"]
    osma_api_version: str = _DEFAULT["osma_api_version"]
    mode: str | None = _DEFAULT["mode"]  # OSMA_ROUTER_MODE as given; `service_mode` is what applies
    heartbeat_ttl: int = _DEFAULT["heartbeat_ttl"]
    lock_ttl: int = _DEFAULT["lock_ttl"]
    ogsm_base_url: str | None = _DEFAULT["ogsm_base_url"]
    ogsm_username: str | None = _DEFAULT["ogsm_username"]
    ogsm_password: Secret | None = _DEFAULT["ogsm_password"]
    ogsm_action_body: str = _DEFAULT["ogsm_action_body"]
    config_path: Path | None = _DEFAULT["config_path"]
    capture: bool = _DEFAULT["capture"]
    capture_max_age: float = _DEFAULT["capture_max_age"]
    capture_max_count: int = _DEFAULT["capture_max_count"]
    encryption_keys: tuple[Secret, ...] = _DEFAULT["encryption_keys"]
    log_format: str = _DEFAULT["log_format"]
    log_level: str = _DEFAULT["log_level"]
    trusted_proxies: tuple[str, ...] = _DEFAULT["trusted_proxies"]
    shutdown_grace: float = _DEFAULT["shutdown_grace"]
    # seconds a webhook body may take to arrive (slow clients: 408)
    body_timeout: float = _DEFAULT["body_timeout"]
    # `serve`'s HTTP edge: request head size, open connections, head and keep-alive timeouts
    max_header_bytes: int = _DEFAULT["max_header_bytes"]
    max_connections: int = _DEFAULT["max_connections"]
    header_timeout: float = _DEFAULT["header_timeout"]
    keepalive_timeout: float = _DEFAULT["keepalive_timeout"]
    # the operator console's login token; without it the console serves loopback only
    console_token: Secret | None = _DEFAULT["console_token"]
    # the handler plugins (entry point names) to load; None: every installed one
    plugins: tuple[str, ...] | None = _DEFAULT["plugins"]
    # Not settings: the rest of the environment, for plugins that read their own variables.
    extra: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read settings from `environ` (default: `os.environ` over a `.env` file)."""
        env = _with_env_file(environ, env_file)
        values: dict[str, Any] = {}
        for row in _TABLE:
            values[row.field] = row.read(env)
            if row.check is not None:
                row.check(values)
        return cls(**values, extra={k: v for k, v in env.items() if not k.startswith(PREFIX)})

    @property
    def service_mode(self) -> str:
        """live, test or any: the Osma API key's mode, else OSMA_ROUTER_MODE, else any
        (docs/contract.md, "Event envelope")."""
        return key_mode(self.osma_api_key) or self.mode or "any"

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                f"{PREFIX}REDIS_URL is not set (for example redis://127.0.0.1:6379/0; "
                "`osma-router dev` prints the URL of its own Redis, and a `trace` line that sets it)"
            )
        return self.redis_url

    def require_webhook_secrets(self) -> tuple[Secret, ...]:
        if not self.webhook_secrets:
            raise ConfigError(
                f"{PREFIX}WEBHOOK_SECRETS is not set: give the signing secret(s) from the Osma "
                "dashboard, comma-separated"
            )
        return self.webhook_secrets

    def summary(self) -> dict[str, str]:
        """What `check-config` prints: every value, secrets masked."""
        lines: dict[str, list[str]] = {}
        for name in (f.name for f in fields(self)):
            row = _ROW_FOR.get(name)
            if row is None or row.show is None:
                continue
            value = getattr(self, name)
            text = row.show.format(value) if isinstance(row.show, str) else row.show(value)
            lines.setdefault(row.key, []).append(text)
        return {key: ", ".join(parts) for key, parts in lines.items()}


def read_setting(
    variable: str, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env"
) -> Any:
    """One setting, read and parsed as `Settings.from_env` reads it, without reading (or
    failing on) the others: for commands such as `sign` that need only one."""
    row = next(row for row in _TABLE if PREFIX + row.variable == variable)
    return row.read(_with_env_file(environ, env_file))


def _with_env_file(environ: Mapping[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    if environ is None:
        environ = os.environ
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(environ)
    return values

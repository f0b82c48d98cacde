"""Settings from the environment (and a `.env` file), validated once at start-up.

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
CLI prints it and exits 1. Secrets are wrapped in `Secret`, whose `repr()` and `str()` never show the
value.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from .exceptions import ConfigError

PREFIX = "OSMA_ROUTER_"
DEFAULT_CONFIG_FILE = "osma-router.toml"
DEFAULT_OSMA_API_VERSION = "2022-05-22"  # the `osma-api-version` the Osma client was written against


class Secret:
    """A string that shows as `'**********'` in reprs, logs and `check-config`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --- parsers: (variable without the prefix, stripped non-empty text) -> value ------------------------


def _text(name: str, value: str) -> str:
    return value


def _secret(name: str, value: str) -> Secret:
    return Secret(value)


def _login_token(name: str, value: str) -> Secret:
    # The console's login form has no attempt limit: the token itself must resist guessing.
    if len(value) < 16:
        raise ConfigError(f"{PREFIX}{name} must be at least 16 characters (a long random string)")
    return Secret(value)


def _secret_list(name: str, value: str) -> tuple[Secret, ...]:
    return tuple(Secret(part.strip()) for part in value.split(",") if part.strip())


def _integer(*, minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name} must be a whole number, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{PREFIX}{name} must be at least {minimum}, got {number}")
        return number

    return parse


def _positive_number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number of seconds, got {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{PREFIX}{name} must be a positive number of seconds, got {value!r}")
    return number


def _redis_url(name: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{PREFIX}{name} must start with redis://, rediss:// or unix://, got {scheme or 'no scheme'!r}"
        )
    return value


def _base_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{PREFIX}{name} must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


OGSM_API_PATH = "/api/v2"


def _ogsm_base_url(name: str, value: str) -> str:
    # Without the API path every OGSM call is a 404 that no retry fixes: refuse it at start-up.
    url = _base_url(name, value)
    if not urlsplit(url).path.endswith(OGSM_API_PATH):
        raise ConfigError(
            f"{PREFIX}{name} must end in {OGSM_API_PATH}, like https://<sub>.ogsm.online{OGSM_API_PATH}, "
            f"got {value!r}"
        )
    return url


MODES = ("live", "test", "any")
_KEY_PREFIXES = {"sk_live_": "live", "sk_test_": "test"}


def _mode(name: str, value: str) -> str:
    value = value.lower()
    if value not in MODES:
        raise ConfigError(f"{PREFIX}{name} must be live, test or any, got {value!r}")
    return value


def key_mode(key: Secret | None) -> str | None:
    """The mode an Osma API key works in, from its prefix; None without a key or with another prefix."""
    if key is None:
        return None
    text = key.reveal()
    return next((mode for prefix, mode in _KEY_PREFIXES.items() if text.startswith(prefix)), None)


def _mode_agrees_with_the_key(values: Mapping[str, Any]) -> None:
    # docs/contract.md, "Event envelope": the key decides; a MODE that says otherwise is a mistake
    # that would otherwise be silently ignored.
    mode, from_key = values["mode"], key_mode(values["osma_api_key"])
    if mode is not None and from_key is not None and mode != from_key:
        raise ConfigError(
            f"{PREFIX}MODE is {mode!r} but {PREFIX}OSMA_API_KEY is a {from_key} key (sk_{from_key}_...), "
            f"which sets the mode: unset {PREFIX}MODE or set it to {from_key}"
        )


def _api_version(name: str, value: str) -> str:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be an ISO 8601 date like 2022-05-22, got {value!r}") from None
    return value


def _queue_name(name: str, value: str) -> str:
    if not all(c.isalnum() or c in "_-" for c in value):
        raise ConfigError(f"{PREFIX}{name} may hold only letters, digits, '_' and '-', got {value!r}")
    return value


def _routes_file(name: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}{name} names {value!r}, which is not a readable file")
    return path


def _routes_file_if_present() -> Path | None:
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _switch(name: str, value: str) -> bool:
    value = value.lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{PREFIX}{name} must be 'on' or 'off', got {value!r}")
    return value in ("on", "true", "1", "yes")


def _fernet_keys(name: str, value: str) -> tuple[Secret, ...]:
    from cryptography.fernet import Fernet

    keys = _secret_list(name, value)
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.reveal())
        except (ValueError, TypeError):
            # The message gives the position, never the key: a near-miss is still a secret.
            raise ConfigError(
                f"{PREFIX}{name} entry {position} is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with `osma-router keygen`)"
            ) from None
    return keys


def _log_format(name: str, value: str) -> str:
    value = value.lower()
    if value not in ("json", "console"):
        raise ConfigError(f"{PREFIX}{name} must be 'json' or 'console', got {value!r}")
    return value


def _ogsm_action_body(name: str, value: str) -> str:
    value = value.lower()
    if value not in ("wrapped", "bare"):
        raise ConfigError(f"{PREFIX}{name} must be 'wrapped' or 'bare', got {value!r}")
    return value


def _log_level(name: str, value: str) -> str:
    value = value.lower()
    if value not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{PREFIX}{name} must be debug, info, warning or error, got {value!r}")
    return value


def _proxy_list(name: str, value: str) -> tuple[str, ...]:
    """Addresses or networks (CIDR) whose X-Forwarded-For/-Proto headers are believed."""
    entries = tuple(part.strip() for part in value.split(",") if part.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"{PREFIX}{name}: {entry!r} is not an IP address or network "
                "(e.g. 10.0.0.0/8, 127.0.0.1, or * to trust every peer)"
            ) from None
    return entries


def _dedup_covers_the_replay_window(values: Mapping[str, Any]) -> None:
    # docs/contract.md, "Replay window": a signature stays valid from t - tolerance to
    # t + tolerance, so a captured delivery can be replayed up to 2 x tolerance after it
    # first arrived; its id must still be remembered by then.
    tolerance, ttl = values["signature_tolerance"], values["dedup_ttl"]
    if ttl < 2 * tolerance:
        raise ConfigError(
            f"{PREFIX}DEDUP_TTL ({ttl:g} s) must be at least twice {PREFIX}SIGNATURE_TOLERANCE "
            f"({tolerance} s), so at least {2 * tolerance}: a captured delivery stays replayable "
            "for twice the tolerance"
        )


def _entry_point_names(name: str, value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    for entry in names:
        if not all(c.isalnum() or c in "_-." for c in entry):
            raise ConfigError(
                f"{PREFIX}{name}: {entry!r} is not an entry point name (comma-separated, e.g. builtin,care)"
            )
    if not names:
        raise ConfigError(f"{PREFIX}{name} names no plugin; leave it unset to load every installed one")
    return names


def _redis_budget(name: str, value: str) -> str:
    """Bytes (`536870912`) or a share of Redis's `maxmemory` (`50%`), kept as written."""
    text = value.replace(" ", "")
    try:
        if text.endswith("%"):
            if not 0 < float(text[:-1]) <= 100:
                raise ValueError
        elif int(text) < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{PREFIX}{name} must be a number of bytes (e.g. 536870912) or a share of Redis's "
            f"maxmemory (e.g. 50%), got {value!r}"
        ) from None
    return text


def _budget_shown(budget: str) -> str:
    if budget.endswith("%"):
        return f"{budget} of Redis maxmemory (none while maxmemory is 0)"
    return f"{budget} bytes"


def _capture_needs_a_key(values: Mapping[str, Any]) -> None:
    if values["capture"] and not values["encryption_keys"]:
        raise ConfigError(
            f"{PREFIX}CAPTURE is on but {PREFIX}ENCRYPTION_KEYS is not set: captured deliveries "
            "are kept encrypted, give at least one Fernet key"
        )


# --- how check-config shows a value -----------------------------------------------------------------


def _or(placeholder: str) -> Callable[[object], str]:
    """Safe for secrets: `str()` of a `Secret` is its mask."""
    return lambda value: str(value) if value else placeholder


def _redis(url: str | None) -> str:
    return _mask_url(url) if url else "- (embedded in `dev`)"


def _secrets(secrets: tuple[Secret, ...]) -> str:
    listed = f" ({', '.join(str(s) for s in secrets)})" if secrets else ""
    return f"{len(secrets)} configured{listed}"


def _count(items: tuple[object, ...]) -> str:
    return f"{len(items)} configured"


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _joined_or(placeholder: str) -> Callable[[tuple[str, ...]], str]:
    return lambda items: ", ".join(items) or placeholder


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


_MASK = "**********"
# Query options that carry a secret: redis-py reads `password=` (and `ssl_password=`, ...)
# from the query as well as from `user:password@`.
_SECRET_OPTION_WORDS = ("pass", "secret", "token", "auth")


def _mask_url(url: str) -> str:
    """`url` with every password redis-py would read from it masked: the one in the
    userinfo, and any query option whose name (decoded, as redis-py decodes it) holds
    pass, secret, token or auth. Host, port, database and other options stay readable."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:{_MASK}@{host}" if at and ":" in user else parts.netloc
    query = "&".join(_mask_option(option) for option in parts.query.split("&"))
    # Put the URL together by hand: urlunsplit drops the `//` of `unix:///path`.
    scheme = url[: len(parts.scheme) + 1]
    slashes = "//" if url[len(scheme) :].startswith("//") else ""
    return (
        f"{scheme}{slashes}{netloc}{parts.path}"
        + (f"?{query}" if parts.query else "")
        + (f"#{_MASK}" if parts.fragment else "")  # meaningless to Redis: a mistyped password?
    )


def _mask_option(option: str) -> str:
    name, equals, _ = option.partition("=")
    if equals and any(word in unquote_plus(name).lower() for word in _SECRET_OPTION_WORDS):
        return f"{name}={_MASK}"
    return option

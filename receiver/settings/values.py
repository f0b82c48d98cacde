"""Parsing and showing one setting's value: the parsers of `table.py`'s rows (stripped,
non-empty text in, the value out, or a one-line `ConfigError` naming the variable), the
rules across settings, how `check-config` prints a value, and `Secret`, which never shows
its value."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from ..exceptions import ConfigError

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

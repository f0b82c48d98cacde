"""Settings from the environment (and a `.env` file), validated once at start-up.

A missing or malformed value raises `ConfigError` with a one-line message that names
the variable; the CLI prints it and exits 1. Secrets are wrapped in `Secret`, whose
`repr()` and `str()` never show the value.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

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


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, checked once."""

    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    webhook_secrets: tuple[Secret, ...] = ()
    signature_tolerance: int = 300
    dedup_ttl: float = 259_200.0
    max_body_bytes: int = 1_048_576
    osmos_max_body_bytes: int = 256 * 1_048_576
    queue_name: str = "osma-router"
    osma_api_key: Secret | None = None
    osma_base_url: str = "https://api.osma.com"
    osma_api_version: str = DEFAULT_OSMA_API_VERSION
    heartbeat_ttl: int = 30
    ogsm_base_url: str | None = None
    ogsm_username: str | None = None
    ogsm_password: Secret | None = None
    config_path: Path | None = None
    capture: bool = False
    capture_max_age: float = 604_800.0
    capture_max_count: int = 100_000
    encryption_keys: tuple[Secret, ...] = ()
    log_format: str = "json"
    log_level: str = "info"
    trusted_proxies: tuple[str, ...] = ()
    shutdown_grace: float = 25.0
    body_timeout: float = 10.0  # seconds a webhook body may take to arrive (slow clients: 408)
    extra: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read settings from `environ` (default: `os.environ` over a `.env` file)."""
        values = _with_env_file(environ, env_file)
        return _parse(values)

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(f"{PREFIX}REDIS_URL is not set (for example redis://127.0.0.1:6379/0)")
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

        def mask(secret: Secret | None) -> str:
            return "-" if secret is None else str(secret)

        return {
            "redis_url": _mask_url(self.redis_url) if self.redis_url else "- (embedded in `dev`)",
            "webhook_secrets": f"{len(self.webhook_secrets)} configured"
            + (f" ({', '.join(mask(s) for s in self.webhook_secrets)})" if self.webhook_secrets else ""),
            "signature_tolerance": f"{self.signature_tolerance} s",
            "dedup_ttl": f"{self.dedup_ttl:g} s",
            "max_body_bytes": str(self.max_body_bytes),
            "osmos_max_body_bytes": str(self.osmos_max_body_bytes),
            "queue": self.queue_name,
            "osma_api_key": mask(self.osma_api_key),
            "osma_base_url": self.osma_base_url,
            "osma_api_version": self.osma_api_version,
            "heartbeat_ttl": f"{self.heartbeat_ttl} s",
            "ogsm_base_url": self.ogsm_base_url or "-",
            "ogsm_username": self.ogsm_username or "-",
            "ogsm_password": mask(self.ogsm_password),
            "config": str(self.config_path) if self.config_path else "- (no routes file)",
            "capture": "on" if self.capture else "off",
            "capture_retention": f"{self.capture_max_age:g} s, at most {self.capture_max_count} deliveries",
            "encryption_keys": f"{len(self.encryption_keys)} configured",
            "trusted_proxies": ", ".join(self.trusted_proxies) or "- (X-Forwarded-* ignored)",
            "shutdown_grace": f"{self.shutdown_grace:g} s",
            "body_timeout": f"{self.body_timeout:g} s",
        }


def _with_env_file(environ: Mapping[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    if environ is None:
        environ = os.environ
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(environ)
    return values


def _parse(env: Mapping[str, str]) -> Settings:
    def get(name: str) -> str | None:
        value = env.get(PREFIX + name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    redis_url = get("REDIS_URL")
    if redis_url is not None:
        scheme = urlsplit(redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"{PREFIX}REDIS_URL must start with redis://, rediss:// or unix://, "
                f"got {scheme or 'no scheme'!r}"
            )

    secrets = _secret_list(get("WEBHOOK_SECRETS"))
    tolerance = _integer("SIGNATURE_TOLERANCE", get("SIGNATURE_TOLERANCE"), 300, minimum=0)
    dedup_ttl = _positive_number("DEDUP_TTL", get("DEDUP_TTL"), 259_200.0)
    max_body = _integer("MAX_BODY_BYTES", get("MAX_BODY_BYTES"), 1_048_576, minimum=1)
    osmos_max = _integer("OSMOS_MAX_BODY_BYTES", get("OSMOS_MAX_BODY_BYTES"), 256 * 1_048_576, minimum=1)

    osma_key = get("OSMA_API_KEY")
    osma_base = _base_url("OSMA_BASE_URL", get("OSMA_BASE_URL") or "https://api.osma.com")
    osma_version = get("OSMA_API_VERSION") or DEFAULT_OSMA_API_VERSION
    try:
        date.fromisoformat(osma_version)
    except ValueError:
        raise ConfigError(
            f"{PREFIX}OSMA_API_VERSION must be an ISO 8601 date like 2022-05-22, got {osma_version!r}"
        ) from None
    heartbeat_ttl = _integer("HEARTBEAT_TTL", get("HEARTBEAT_TTL"), 30, minimum=3)
    ogsm_base = get("OGSM_BASE_URL")
    if ogsm_base is not None:
        ogsm_base = _base_url("OGSM_BASE_URL", ogsm_base)
    ogsm_password = get("OGSM_PASSWORD")

    config_value = get("CONFIG")
    config_path: Path | None
    if config_value is not None:
        config_path = Path(config_value)
        if not config_path.is_file():
            raise ConfigError(f"{PREFIX}CONFIG names {config_value!r}, which is not a readable file")
    else:
        default = Path(DEFAULT_CONFIG_FILE)
        config_path = default if default.is_file() else None

    capture_value = (get("CAPTURE") or "off").lower()
    if capture_value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{PREFIX}CAPTURE must be 'on' or 'off', got {capture_value!r}")
    capture = capture_value in ("on", "true", "1", "yes")
    capture_max_age = _positive_number("CAPTURE_MAX_AGE", get("CAPTURE_MAX_AGE"), 604_800.0)
    capture_max_count = _integer("CAPTURE_MAX_COUNT", get("CAPTURE_MAX_COUNT"), 100_000, minimum=1)
    keys = _secret_list(get("ENCRYPTION_KEYS"))
    if keys:
        _check_fernet_keys(keys)
    if capture and not keys:
        raise ConfigError(
            f"{PREFIX}CAPTURE is on but {PREFIX}ENCRYPTION_KEYS is not set: captured deliveries "
            "are kept encrypted, give at least one Fernet key"
        )

    log_format = (get("LOG_FORMAT") or "json").lower()
    if log_format not in ("json", "console"):
        raise ConfigError(f"{PREFIX}LOG_FORMAT must be 'json' or 'console', got {log_format!r}")
    log_level = (get("LOG_LEVEL") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{PREFIX}LOG_LEVEL must be debug, info, warning or error, got {log_level!r}")

    trusted_proxies = _proxy_list(get("TRUSTED_PROXIES"))
    shutdown_grace = _positive_number("SHUTDOWN_GRACE", get("SHUTDOWN_GRACE"), 25.0)
    body_timeout = _positive_number("BODY_TIMEOUT", get("BODY_TIMEOUT"), 10.0)

    queue_name = get("QUEUE") or "osma-router"
    if not all(c.isalnum() or c in "_-" for c in queue_name):
        raise ConfigError(f"{PREFIX}QUEUE may hold only letters, digits, '_' and '-', got {queue_name!r}")

    return Settings(
        redis_url=redis_url,
        webhook_secrets=secrets,
        signature_tolerance=tolerance,
        dedup_ttl=dedup_ttl,
        max_body_bytes=max_body,
        osmos_max_body_bytes=osmos_max,
        queue_name=queue_name,
        osma_api_key=Secret(osma_key) if osma_key else None,
        osma_base_url=osma_base,
        osma_api_version=osma_version,
        heartbeat_ttl=heartbeat_ttl,
        ogsm_base_url=ogsm_base,
        ogsm_username=get("OGSM_USERNAME"),
        ogsm_password=Secret(ogsm_password) if ogsm_password else None,
        config_path=config_path,
        capture=capture,
        capture_max_age=capture_max_age,
        capture_max_count=capture_max_count,
        encryption_keys=keys,
        log_format=log_format,
        log_level=log_level,
        trusted_proxies=trusted_proxies,
        shutdown_grace=shutdown_grace,
        body_timeout=body_timeout,
        extra={k: v for k, v in env.items() if not k.startswith(PREFIX)},
    )


def _proxy_list(value: str | None) -> tuple[str, ...]:
    """Addresses or networks (CIDR) whose X-Forwarded-For/-Proto headers are believed."""
    if value is None:
        return ()
    entries = tuple(part.strip() for part in value.split(",") if part.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"{PREFIX}TRUSTED_PROXIES: {entry!r} is not an IP address or network "
                "(e.g. 10.0.0.0/8, 127.0.0.1, or * to trust every peer)"
            ) from None
    return entries


def _secret_list(value: str | None) -> tuple[Secret, ...]:
    if value is None:
        return ()
    return tuple(Secret(part.strip()) for part in value.split(",") if part.strip())


def _integer(name: str, value: str | None, default: int, *, minimum: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{PREFIX}{name} must be at least {minimum}, got {number}")
    return number


def _positive_number(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number of seconds, got {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{PREFIX}{name} must be a positive number of seconds, got {value!r}")
    return number


def _base_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{PREFIX}{name} must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _check_fernet_keys(keys: tuple[Secret, ...]) -> None:
    from cryptography.fernet import Fernet

    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.reveal())
        except (ValueError, TypeError):
            raise ConfigError(
                f"{PREFIX}ENCRYPTION_KEYS entry {position} is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with `osma-router keygen`)"
            ) from None


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":**********@")
        return parts._replace(netloc=netloc).geturl()
    return url

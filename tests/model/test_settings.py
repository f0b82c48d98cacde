"""Settings: defaults, one ConfigError naming the variable per bad value, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from receiver.exceptions import ConfigError
from receiver.settings import Secret, Settings

SECRET = "whsec_topsecret_value_123"


@pytest.fixture(autouse=True)
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test where no `.env` or `osma-router.toml` lies around by accident."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def load(env: dict[str, str], env_file: str | Path | None = None) -> Settings:
    return Settings.from_env(env, env_file=env_file)


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(env)
    message = str(caught.value)
    assert "\n" not in message.strip(), "configuration errors are one line"
    return caught.value


def test_defaults() -> None:
    settings = load({})
    assert settings.redis_url is None
    assert settings.webhook_secrets == ()
    assert settings.signature_tolerance == 300
    assert settings.dedup_ttl == 259_200
    assert settings.max_body_bytes == 1_048_576
    assert settings.osma_api_key is None
    assert settings.osma_base_url == "https://api.osma.com"
    assert settings.ogsm_base_url is None
    assert settings.ogsm_username is None
    assert settings.ogsm_password is None
    assert settings.config_path is None
    assert settings.capture is False
    assert settings.encryption_keys == ()


def test_requiring_absent_values_names_the_variable() -> None:
    settings = load({})
    with pytest.raises(ConfigError, match="OSMA_ROUTER_REDIS_URL"):
        settings.require_redis_url()
    with pytest.raises(ConfigError, match="OSMA_ROUTER_WEBHOOK_SECRETS"):
        settings.require_webhook_secrets()


def test_values_are_read() -> None:
    key = Fernet.generate_key().decode()
    settings = load(
        {
            "OSMA_ROUTER_REDIS_URL": "redis://127.0.0.1:6379/2",
            "OSMA_ROUTER_WEBHOOK_SECRETS": "a,b",
            "OSMA_ROUTER_SIGNATURE_TOLERANCE": "60",
            "OSMA_ROUTER_DEDUP_TTL": "3600",
            "OSMA_ROUTER_OSMA_API_KEY": "key_1",
            "OSMA_ROUTER_OGSM_BASE_URL": "https://acme.ogsm.online/api/v2",
            "OSMA_ROUTER_OGSM_USERNAME": "bot",
            "OSMA_ROUTER_OGSM_PASSWORD": "pw",
            "OSMA_ROUTER_CAPTURE": "on",
            "OSMA_ROUTER_ENCRYPTION_KEYS": key,
        }
    )
    assert settings.require_redis_url() == "redis://127.0.0.1:6379/2"
    assert [s.reveal() for s in settings.webhook_secrets] == ["a", "b"]
    assert settings.signature_tolerance == 60
    assert settings.dedup_ttl == 3600
    assert settings.osma_api_key == Secret("key_1")
    assert settings.ogsm_base_url == "https://acme.ogsm.online/api/v2"
    assert settings.ogsm_password == Secret("pw")
    assert settings.capture is True
    assert [k.reveal() for k in settings.encryption_keys] == [key]


def test_plain_http_base_urls_are_allowed() -> None:
    settings = load({"OSMA_ROUTER_OSMA_BASE_URL": "http://127.0.0.1:9000"})
    assert settings.osma_base_url == "http://127.0.0.1:9000"


# --- one ConfigError per malformed value, naming the variable -----------------------------


@pytest.mark.parametrize(
    "variable, value",
    [
        ("SIGNATURE_TOLERANCE", "abc"),
        ("SIGNATURE_TOLERANCE", "1.5"),
        ("SIGNATURE_TOLERANCE", "-1"),
        ("DEDUP_TTL", "0"),
        ("DEDUP_TTL", "-1"),
        ("DEDUP_TTL", "x"),
        ("DEDUP_TTL", "nan"),
        ("DEDUP_TTL", "inf"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("REDIS_URL", "localhost"),
        ("OSMA_BASE_URL", "ftp://api.osma.com"),
        ("OSMA_BASE_URL", "api.osma.com"),
        ("OGSM_BASE_URL", "acme.ogsm.online/api/v2"),
        ("CAPTURE", "maybe"),
        ("ENCRYPTION_KEYS", "not-a-fernet-key"),
    ],
)
def test_malformed_value_names_the_variable(variable: str, value: str) -> None:
    error = config_error({f"OSMA_ROUTER_{variable}": value})
    assert f"OSMA_ROUTER_{variable}" in str(error)


def test_capture_on_without_keys_is_refused() -> None:
    error = config_error({"OSMA_ROUTER_CAPTURE": "on"})
    assert "OSMA_ROUTER_CAPTURE" in str(error) or "OSMA_ROUTER_ENCRYPTION_KEYS" in str(error)
    assert "OSMA_ROUTER_ENCRYPTION_KEYS" in str(error)


def test_capture_on_with_a_key_is_fine() -> None:
    key = Fernet.generate_key().decode()
    settings = load({"OSMA_ROUTER_CAPTURE": "on", "OSMA_ROUTER_ENCRYPTION_KEYS": key})
    assert settings.capture is True


def test_bad_fernet_key_among_good_ones_is_refused_without_echoing_it() -> None:
    good = Fernet.generate_key().decode()
    bad = "c2VjcmV0LWJ1dC1ub3QtYS1mZXJuZXQta2V5"
    error = config_error({"OSMA_ROUTER_ENCRYPTION_KEYS": f"{good},{bad}"})
    assert "OSMA_ROUTER_ENCRYPTION_KEYS" in str(error)
    assert bad not in str(error) and good not in str(error)


def test_config_naming_a_missing_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    error = config_error({"OSMA_ROUTER_CONFIG": str(missing)})
    assert "OSMA_ROUTER_CONFIG" in str(error)
    assert "nope.toml" in str(error)


def test_config_naming_an_existing_file_is_kept(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("")
    assert load({"OSMA_ROUTER_CONFIG": str(routes)}).config_path == routes


def test_default_config_file_is_used_when_present(clean_cwd: Path) -> None:
    (clean_cwd / "osma-router.toml").write_text("")
    assert load({}).config_path == Path("osma-router.toml")


def test_error_for_a_bad_value_does_not_echo_secrets() -> None:
    error = config_error({"OSMA_ROUTER_WEBHOOK_SECRETS": SECRET, "OSMA_ROUTER_DEDUP_TTL": "0"})
    assert SECRET not in str(error)


# --- dedup window -------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("1", 1.0), ("0.5", 0.5), ("259200", 259_200.0), (" 10 ", 10.0)])
def test_dedup_ttl_accepts_any_positive_number(value: str, expected: float) -> None:
    env = {"OSMA_ROUTER_DEDUP_TTL": value, "OSMA_ROUTER_SIGNATURE_TOLERANCE": "0"}
    assert load(env).dedup_ttl == expected


# --- replay window: the dedup window covers twice the tolerance -----------------------------


@pytest.mark.parametrize(
    "tolerance, ttl", [("300", "599"), ("300", "1"), ("1", "1.5"), ("100000", "199999.9")]
)
def test_a_dedup_ttl_under_twice_the_tolerance_stops_start_up(tolerance: str, ttl: str) -> None:
    error = config_error({"OSMA_ROUTER_SIGNATURE_TOLERANCE": tolerance, "OSMA_ROUTER_DEDUP_TTL": ttl})
    assert "OSMA_ROUTER_DEDUP_TTL" in str(error) and "OSMA_ROUTER_SIGNATURE_TOLERANCE" in str(error)


@pytest.mark.parametrize("tolerance, ttl", [("300", "600"), ("0", "0.001"), ("86400", "172800"), ("1", "2")])
def test_any_tolerance_is_allowed_when_the_dedup_ttl_covers_it(tolerance: str, ttl: str) -> None:
    settings = load({"OSMA_ROUTER_SIGNATURE_TOLERANCE": tolerance, "OSMA_ROUTER_DEDUP_TTL": ttl})
    assert settings.dedup_ttl >= 2 * settings.signature_tolerance


def test_a_large_tolerance_needs_a_dedup_ttl_beyond_the_default() -> None:
    # 72 h of dedup covers a tolerance of up to 36 h; one second more is refused.
    assert load({"OSMA_ROUTER_SIGNATURE_TOLERANCE": "129600"}).dedup_ttl == 259_200
    error = config_error({"OSMA_ROUTER_SIGNATURE_TOLERANCE": "129601"})
    assert "OSMA_ROUTER_DEDUP_TTL" in str(error) and "OSMA_ROUTER_SIGNATURE_TOLERANCE" in str(error)


@pytest.mark.parametrize("value, expected", [("0", 0), ("300", 300), ("3600", 3600)])
def test_signature_tolerance_accepts_whole_seconds(value: str, expected: int) -> None:
    assert load({"OSMA_ROUTER_SIGNATURE_TOLERANCE": value}).signature_tolerance == expected


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:6380/1", "unix:///tmp/redis.sock"])
def test_redis_url_schemes_accepted(url: str) -> None:
    assert load({"OSMA_ROUTER_REDIS_URL": url}).redis_url == url


# --- secrets ------------------------------------------------------------------------------


def test_secret_list_is_trimmed_and_empty_entries_dropped() -> None:
    settings = load({"OSMA_ROUTER_WEBHOOK_SECRETS": "  whsec_new , whsec_old,, ,"})
    assert [s.reveal() for s in settings.webhook_secrets] == ["whsec_new", "whsec_old"]


def test_secret_str_and_repr_are_masked() -> None:
    secret = Secret(SECRET)
    assert SECRET not in str(secret)
    assert SECRET not in repr(secret)
    assert SECRET not in f"{secret}"
    assert secret.reveal() == SECRET


def test_settings_repr_never_shows_a_secret() -> None:
    key = Fernet.generate_key().decode()
    settings = load(
        {
            "OSMA_ROUTER_WEBHOOK_SECRETS": f"{SECRET},whsec_second_secret",
            "OSMA_ROUTER_OSMA_API_KEY": "osma_api_key_value_xyz",
            "OSMA_ROUTER_OGSM_PASSWORD": "ogsm_password_value_xyz",
            "OSMA_ROUTER_ENCRYPTION_KEYS": key,
            "OSMA_ROUTER_REDIS_URL": "redis://:redis_password_xyz@127.0.0.1:6379/0",
            "UNRELATED_TOKEN": "unrelated_token_value_xyz",
        }
    )
    for text in (repr(settings), str(settings), repr(settings.summary())):
        for value in (
            SECRET,
            "whsec_second_secret",
            "osma_api_key_value_xyz",
            "ogsm_password_value_xyz",
            key,
            "unrelated_token_value_xyz",
        ):
            assert value not in text


def test_settings_repr_masks_the_redis_password() -> None:
    # summary() masks the password of the Redis URL, so it is a secret like the others.
    settings = load({"OSMA_ROUTER_REDIS_URL": "redis://:redis_password_xyz@127.0.0.1:6379/0"})
    assert "redis_password_xyz" not in repr(settings.summary())
    assert "redis_password_xyz" not in repr(settings)


# --- .env ---------------------------------------------------------------------------------


def test_env_file_is_read_when_present(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OSMA_ROUTER_WEBHOOK_SECRETS=whsec_from_file\nOSMA_ROUTER_SIGNATURE_TOLERANCE=120\n")
    settings = load({}, env_file=env_file)
    assert [s.reveal() for s in settings.webhook_secrets] == ["whsec_from_file"]
    assert settings.signature_tolerance == 120


def test_real_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OSMA_ROUTER_SIGNATURE_TOLERANCE=120\nOSMA_ROUTER_DEDUP_TTL=60\n")
    settings = load({"OSMA_ROUTER_SIGNATURE_TOLERANCE": "30"}, env_file=env_file)
    assert settings.signature_tolerance == 30
    assert settings.dedup_ttl == 60


def test_process_environment_wins_over_default_env_file(
    clean_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OSMA_ROUTER_"):
            monkeypatch.delenv(name)
    (clean_cwd / ".env").write_text("OSMA_ROUTER_SIGNATURE_TOLERANCE=120\nOSMA_ROUTER_DEDUP_TTL=600\n")
    monkeypatch.setenv("OSMA_ROUTER_DEDUP_TTL", "240")
    settings = Settings.from_env()
    assert settings.signature_tolerance == 120
    assert settings.dedup_ttl == 240


def test_missing_env_file_is_not_an_error(tmp_path: Path) -> None:
    assert load({}, env_file=tmp_path / "absent.env").signature_tolerance == 300


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OSMA_ROUTER_DEDUP_TTL=soon\n")
    with pytest.raises(ConfigError, match="OSMA_ROUTER_DEDUP_TTL"):
        load({}, env_file=env_file)


# --- one table: defaults, error order, check-config --------------------------------------


def test_default_settings_are_those_of_an_empty_environment() -> None:
    assert Settings() == load({})
    assert Settings().summary() == load({}).summary()


@pytest.mark.parametrize(
    "env, reported",
    [
        ({"OSMA_ROUTER_QUEUE": "a b", "OSMA_ROUTER_LOG_LEVEL": "trace"}, "LOG_LEVEL"),
        ({"OSMA_ROUTER_QUEUE": "a b", "OSMA_ROUTER_BODY_TIMEOUT": "0"}, "BODY_TIMEOUT"),
        ({"OSMA_ROUTER_CAPTURE": "on", "OSMA_ROUTER_LOG_FORMAT": "xml"}, "CAPTURE is on but"),
        ({"OSMA_ROUTER_CAPTURE": "on", "OSMA_ROUTER_CAPTURE_MAX_AGE": "0"}, "CAPTURE_MAX_AGE"),
        ({"OSMA_ROUTER_CAPTURE": "on", "OSMA_ROUTER_ENCRYPTION_KEYS": "bad"}, "ENCRYPTION_KEYS entry 1"),
        ({"OSMA_ROUTER_DEDUP_TTL": "0", "OSMA_ROUTER_SIGNATURE_TOLERANCE": "x"}, "SIGNATURE_TOLERANCE"),
    ],
)
def test_the_first_bad_value_is_reported_in_a_fixed_order(env: dict[str, str], reported: str) -> None:
    assert str(config_error(env)).startswith(f"OSMA_ROUTER_{reported}")


def test_summary_lists_every_shown_setting_in_field_order() -> None:
    summary = load({}).summary()
    assert list(summary) == [
        "redis_url",
        "webhook_secrets",
        "signature_tolerance",
        "dedup_ttl",
        "max_body_bytes",
        "osmos_max_body_bytes",
        "osmos_redis_budget",
        "queue",
        "osma_api_key",
        "osma_base_url",
        "osma_api_version",
        "heartbeat_ttl",
        "lock_ttl",
        "ogsm_base_url",
        "ogsm_username",
        "ogsm_password",
        "config",
        "capture",
        "capture_retention",
        "encryption_keys",
        "trusted_proxies",
        "shutdown_grace",
        "body_timeout",
        "max_header_bytes",
        "max_connections",
        "header_timeout",
        "keepalive_timeout",
        "console_token",
    ]
    assert summary["capture_retention"] == "604800 s, at most 100000 deliveries"
    assert summary["webhook_secrets"] == "0 configured"

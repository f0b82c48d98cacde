"""`sign`, `send` and `replay --to` take the signing secret from `--secret`, `--secret-file`
or `OSMA_ROUTER_WEBHOOK_SECRETS` (its first secret), in that order; with none of them the
command stops with one line naming all three. Real `osma-router` subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.model.signature import SignatureVerifier
from receiver.settings import Secret
from tests.capture_support import capture_line
from tests.support import SECRET, make_event, osma_router

NOW = 1_700_000_000
FLAG, FILE, ENV, ENV_SECOND = "whsec_flag_1", "whsec_file_2", "whsec_env_3", "whsec_env_4"


def signed_with(header: str, body: bytes) -> str:
    """Which of the candidate secrets made `header`."""
    for secret in (FLAG, FILE, ENV, ENV_SECOND, SECRET):
        try:
            SignatureVerifier([Secret(secret)], 0).verify(body, header, NOW)
            return secret
        except Exception:  # noqa: BLE001 - not this one
            continue
    raise AssertionError(f"signed with none of the candidates: {header}")


@pytest.fixture
def event(tmp_path: Path) -> bytes:
    body = make_event(event_id="evt_secret_sources")
    (tmp_path / "event.json").write_bytes(body)
    (tmp_path / "secret.txt").write_text(f"  {FILE}  \nthe second line is not read\n")
    return body


def sign(tmp_path: Path, *options: str, **env: str):
    return osma_router(["sign", "--timestamp", str(NOW), *options, "event.json"], env, tmp_path)


@pytest.mark.parametrize(
    "options, env, expected",
    [
        (["--secret", FLAG], {"OSMA_ROUTER_WEBHOOK_SECRETS": ENV}, FLAG),
        (["--secret", FLAG, "--secret-file", "secret.txt"], {"OSMA_ROUTER_WEBHOOK_SECRETS": ENV}, FLAG),
        (["--secret-file", "secret.txt"], {"OSMA_ROUTER_WEBHOOK_SECRETS": ENV}, FILE),
        ([], {"OSMA_ROUTER_WEBHOOK_SECRETS": f" {ENV} , {ENV_SECOND}"}, ENV),
    ],
    ids=["flag-over-env", "flag-over-file", "file-over-env", "env-first-secret"],
)
def test_sign_takes_one_source_in_the_documented_order(tmp_path, event, options, env, expected):
    result = sign(tmp_path, *options, **env)
    assert result.returncode == 0, result.stderr
    assert signed_with(result.stdout.strip(), event) == expected


def test_the_secret_can_come_from_a_dot_env_file(tmp_path, event):
    (tmp_path / ".env").write_text(f"OSMA_ROUTER_WEBHOOK_SECRETS={ENV},{ENV_SECOND}\n")
    result = sign(tmp_path)
    assert result.returncode == 0, result.stderr
    assert signed_with(result.stdout.strip(), event) == ENV


def test_an_unrelated_bad_setting_does_not_stop_sign(tmp_path, event):
    result = sign(tmp_path, OSMA_ROUTER_WEBHOOK_SECRETS=ENV, OSMA_ROUTER_DEDUP_TTL="soon")
    assert result.returncode == 0, result.stderr
    assert signed_with(result.stdout.strip(), event) == ENV


@pytest.mark.parametrize("command", ["sign", "send", "replay"])
def test_no_secret_at_all_is_one_line_naming_all_three_sources(tmp_path, event, command):
    (tmp_path / "one.jsonl").write_bytes(capture_line(event) + b"\n")
    args = {
        "sign": ["sign", "event.json"],
        "send": ["send", "http://127.0.0.1:9/webhooks/osma", "event.json"],
        "replay": ["replay", "one.jsonl", "--to", "http://127.0.0.1:9"],
    }[command]
    result = osma_router(args, {"OSMA_ROUTER_WEBHOOK_SECRETS": ""}, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for source in ("--secret", "--secret-file", "OSMA_ROUTER_WEBHOOK_SECRETS"):
        assert source in lines[0]


@pytest.mark.parametrize("content", ["", "\n", "   \nwhsec_on_line_two\n"])
def test_a_secret_file_with_an_empty_first_line_is_refused(tmp_path, event, content):
    (tmp_path / "empty.txt").write_text(content)
    result = sign(tmp_path, "--secret-file", "empty.txt", OSMA_ROUTER_WEBHOOK_SECRETS=ENV)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "empty.txt" in result.stderr


def test_a_missing_secret_file_is_one_line(tmp_path, event):
    result = sign(tmp_path, "--secret-file", "nope.txt", OSMA_ROUTER_WEBHOOK_SECRETS=ENV)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "nope.txt" in result.stderr and "Traceback" not in result.stderr


def test_send_signs_with_the_environment_secret(tmp_path, event, start_receiver):
    receiver = start_receiver()
    result = osma_router(
        ["send", f"{receiver.url}/webhooks/osma", "event.json"],
        {"OSMA_ROUTER_WEBHOOK_SECRETS": SECRET},
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("HTTP 202")


def test_send_signs_with_a_secret_file(tmp_path, event, start_receiver):
    receiver = start_receiver()
    (tmp_path / "receiver-secret").write_text(SECRET + "\n")
    result = osma_router(
        ["send", f"{receiver.url}/webhooks/osma", "event.json", "--secret-file", "receiver-secret"],
        {"OSMA_ROUTER_WEBHOOK_SECRETS": "whsec_not_the_receivers"},
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("HTTP 202")


@pytest.mark.parametrize("source", ["env", "file"])
def test_replay_to_a_receiver_signs_with_the_env_or_file_secret(tmp_path, event, start_receiver, source):
    receiver = start_receiver()
    (tmp_path / "one.jsonl").write_bytes(capture_line(event) + b"\n")
    (tmp_path / "receiver-secret").write_text(SECRET + "\n")
    args = ["replay", "one.jsonl", "--to", receiver.url]
    env = {"OSMA_ROUTER_WEBHOOK_SECRETS": SECRET if source == "env" else ""}
    if source == "file":
        args += ["--secret-file", "receiver-secret"]
    result = osma_router(args, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accepted 1" in result.stdout


def test_a_secret_file_without_to_is_refused_like_secret(tmp_path, event):
    (tmp_path / "one.jsonl").write_bytes(capture_line(event) + b"\n")
    result = osma_router(
        ["replay", "one.jsonl", "--direct", "--secret-file", "secret.txt"],
        {"OSMA_ROUTER_WEBHOOK_SECRETS": ENV},
        tmp_path,
    )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--to" in result.stderr

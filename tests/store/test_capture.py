"""Capture of verified deliveries (encrypted in Redis), `capture export`, and `rekey`."""

from __future__ import annotations

import io
import logging
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from cryptography.fernet import Fernet, InvalidToken

from receiver.crypto import Sealer
from receiver.keys import CAPTURE_DUPLICATES_KEY, CAPTURE_KEY
from receiver.settings import Secret
from receiver.store.capture import export_captures
from tests.capture_support import raw_bytes, read_lines, redis_contents
from tests.support import env_for, handled, make_event, osma_router, signature_headers

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
ROUTES = '[[routes]]\non = "task.*"\nhandler = "sample.record"\nlabel = "r"\n'
T0 = 1_795_000_000.0  # 2026-11-18T...Z: a fixed "now" for receivers with a test clock

# Bytes a re-serialiser would change: spacing, key order, escapes, non-ASCII, a newline at the end.
ODD_BODY = (
    b'{ "type" : "task.completed",\t"id":"evt_odd", "data": {"object": {"id": "tsk_9", '
    b'"note": "Ren\\u00e9e \xc3\xa9 \xf0\x9f\x98\x80 \\"quoted\\" \\/ ", "n": 1.50, "z": null}},'
    b' "created_at": "2026-11-20T10:00:00+00:00"}\n'
)


def capturing(start_receiver, routes: str = ROUTES, *, keys: str = KEY_A, **env: str):
    return start_receiver(routes, OSMA_ROUTER_CAPTURE="on", OSMA_ROUTER_ENCRYPTION_KEYS=keys, **env)


def export(redis_server, tmp_path, *args: str, keys: str = KEY_A, **env: str):
    out = tmp_path / "out.jsonl"
    result = osma_router(
        ["capture", "export", str(out), *args],
        env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=keys, **env),
    )
    return result, out


def test_capture_then_export_round_trips_bodies_byte_for_byte(start_receiver, redis, redis_server, tmp_path):
    receiver = capturing(start_receiver)
    plain = make_event(event_id="evt_plain")
    headers = signature_headers(ODD_BODY) | {
        "user-agent": "Osma-Webhooks/1.0",
        "osma-delivery": "dlv_1",
        "x-forwarded-for": "10.0.0.1",
    }
    assert receiver.post(ODD_BODY, headers=headers).status_code == 202
    assert receiver.post(plain).status_code == 202
    assert receiver.post(plain).status_code == 200  # a duplicate is captured too, marked
    assert receiver.post(make_event(event_id="evt_bad"), secret="whsec_wrong").status_code == 401

    result, out = export(redis_server, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = read_lines(out)
    assert [line["body"].encode() for line in lines] == [ODD_BODY, plain, plain]
    assert [line.get("duplicate") for line in lines] == [None, None, True]
    first = lines[0]
    assert first["source"] == "osma"
    assert first["headers"] == {
        "content-type": "application/json",
        "user-agent": "Osma-Webhooks/1.0",
        "osma-delivery": "dlv_1",
    }
    received = datetime.fromisoformat(first["received_at"])
    assert received.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - received).total_seconds()) < 60
    assert "evt_bad" not in out.read_text()
    assert (out.stat().st_mode & 0o077) == 0  # decrypted health data: owner only


def test_redis_and_logs_never_hold_a_member_name_in_clear(start_receiver, redis, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = capturing(start_receiver)
    member = {"id": "mem_77", "object": "member", "first_name": "Zebulon", "last_name": "Quackenbush"}
    body = make_event("member.created", event_id="evt_member", obj=member)
    task = make_event(
        "task.completed",
        event_id="evt_task",
        obj={"id": "tsk_5", "object": "task", "member_name": "Zebulon Quackenbush"},
    )
    assert receiver.post(body).status_code == 202
    assert receiver.post(task).json()["jobs"] == 1  # a queued job holds the body: sealed too
    assert receiver.post(body).status_code == 200

    contents = redis_contents(redis)
    assert redis.xlen(CAPTURE_KEY) == 2 and redis.xlen(CAPTURE_DUPLICATES_KEY) == 1
    everything = raw_bytes(contents)
    for secret_word in (b"Zebulon", b"Quackenbush", b"mem_77", b"tsk_5", b"member_name"):
        assert secret_word not in everything
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "Zebulon" not in logged and "Quackenbush" not in logged


def test_capture_off_keeps_nothing(start_receiver, redis):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=KEY_A)
    assert receiver.post(make_event(event_id="evt_off")).status_code == 202
    assert not redis.exists(CAPTURE_KEY)


def test_retention_keeps_at_most_max_count(start_receiver, redis, redis_server, tmp_path):
    receiver = capturing(start_receiver, OSMA_ROUTER_CAPTURE_MAX_COUNT="3")
    for n in range(5):
        assert receiver.post(make_event(event_id=f"evt_count_{n}")).status_code == 202
    assert redis.xlen(CAPTURE_KEY) == 3
    result, out = export(redis_server, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [orjson.loads(line["body"])["id"] for line in read_lines(out)] == [
        f"evt_count_{n}" for n in (2, 3, 4)
    ]


def test_a_flood_of_duplicates_never_evicts_real_captures(start_receiver, redis, redis_server, tmp_path):
    receiver = capturing(start_receiver, OSMA_ROUTER_CAPTURE_MAX_COUNT="3")
    real = [make_event(event_id=f"evt_real_{n}") for n in range(2)]
    for body in real:
        assert receiver.post(body).status_code == 202
    for _ in range(20):  # a replayed flood: every one a duplicate
        assert receiver.post(real[1]).status_code == 200
    result, out = export(redis_server, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = read_lines(out)
    assert [line["body"].encode() for line in lines if not line.get("duplicate")] == real
    duplicates = [line for line in lines if line.get("duplicate")]
    assert len(duplicates) == 1  # the room the first deliveries leave: at most 3 in all
    assert all(line["body"].encode() == real[1] for line in duplicates)
    times = [line["received_at"] for line in lines]
    assert times == sorted(times)  # one file, in the order the deliveries came in


def test_status_commands_count_captures_with_their_duplicates(start_receiver, redis, redis_server, tmp_path):
    receiver = capturing(start_receiver)
    body = make_event(event_id="evt_counted")
    assert [receiver.post(body).status_code for _ in range(3)] == [202, 200, 200]
    status = osma_router(["status", "--json"], env_for(redis_server.url), tmp_path)
    assert status.returncode == 0, status.stderr  # it read the stream as a sorted set: WRONGTYPE
    assert orjson.loads(status.stdout)["capture"]["kept"] == 3
    capture = osma_router(["capture", "status"], env_for(redis_server.url))
    assert "kept deliveries: 1\nkept duplicates: 2" in capture.stdout


def captured_ids(redis) -> list[str]:
    lines = [
        orjson.loads(Fernet(KEY_A.encode()).decrypt(fields[b"d"])) for _, fields in redis.xrange(CAPTURE_KEY)
    ]
    return [orjson.loads(line["body"])["id"] for line in lines]


def test_retention_drops_deliveries_older_than_max_age(start_receiver, redis):
    receiver = capturing(start_receiver, OSMA_ROUTER_CAPTURE_MAX_AGE="0.3")
    receiver.post(make_event(event_id="evt_old"))
    assert 0 < redis.pttl(CAPTURE_KEY) <= 300  # the whole stream goes when nothing arrives for max age
    time.sleep(0.5)
    receiver.post(make_event(event_id="evt_new"))  # each write trims what is older
    assert captured_ids(redis) == ["evt_new"]


def test_export_leaves_out_what_outlived_max_age_before_a_write_trimmed_it(start_receiver, redis):
    capturing(start_receiver).post(make_event(event_id="evt_kept"))
    sealer = Sealer([Secret(KEY_A)])
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert export_captures(redis, sealer, io.BytesIO(), max_age=60, now=later).written == 0
    assert export_captures(redis, sealer, io.BytesIO(), max_age=120, now=later).written == 1


def test_export_filters_by_type_and_received_time(start_receiver, redis, redis_server, tmp_path):
    now = [T0]
    receiver = capturing(start_receiver, clock=lambda: now[0])
    for n, kind in enumerate(["task.completed", "member.created", "task.updated", "task.completed"]):
        receiver.post(make_event(kind, event_id=f"evt_f{n}"), timestamp=int(now[0]))
        now[0] += 3600
    hour = [datetime.fromtimestamp(T0 + 3600 * n, UTC).isoformat() for n in range(4)]

    def ids(*args: str) -> list[str]:
        result, out = export(redis_server, tmp_path, *args)
        assert result.returncode == 0, result.stderr
        return [orjson.loads(line["body"])["id"] for line in read_lines(out)]

    assert ids() == ["evt_f0", "evt_f1", "evt_f2", "evt_f3"]
    assert ids("--type", "task.completed") == ["evt_f0", "evt_f3"]
    assert ids("--type", "task.*") == ["evt_f0", "evt_f2", "evt_f3"]
    assert ids("--type", "member.created", "--type", "task.updated") == ["evt_f1", "evt_f2"]
    assert ids("--since", hour[1]) == ["evt_f1", "evt_f2", "evt_f3"]
    assert ids("--until", hour[2]) == ["evt_f0", "evt_f1"]  # until is exclusive
    assert ids("--since", hour[1], "--until", hour[3], "--type", "task.*") == ["evt_f2"]


def test_encrypted_export_decrypts_only_with_the_key(start_receiver, redis, redis_server, tmp_path):
    receiver = capturing(start_receiver)
    body = make_event(event_id="evt_sealed_export")
    receiver.post(body)
    result, out = export(redis_server, tmp_path, "--encrypted")
    assert result.returncode == 0, result.stderr
    (token,) = out.read_bytes().splitlines()
    assert b"evt_sealed_export" not in token
    line = orjson.loads(Fernet(KEY_A.encode()).decrypt(token))
    assert line["body"].encode() == body
    with pytest.raises(InvalidToken):
        Fernet(KEY_B.encode()).decrypt(token)


def test_key_rotation_keeps_old_captures_readable_and_rekey_moves_them(
    start_receiver, redis, redis_server, tmp_path
):
    old = capturing(start_receiver)
    old_body = make_event(event_id="evt_under_a")
    assert old.post(old_body).json()["jobs"] == 1  # its queued job is sealed under A too
    before = {fields[b"d"] for _, fields in redis.xrange(CAPTURE_KEY)}

    rotated = capturing(start_receiver, keys=f"{KEY_B},{KEY_A}")  # new key first, old one after it
    new_body = make_event(event_id="evt_under_b")
    rotated.post(new_body)
    result, out = export(redis_server, tmp_path, keys=f"{KEY_B},{KEY_A}")
    assert result.returncode == 0, result.stderr
    assert [line["body"].encode() for line in read_lines(out)] == [old_body, new_body]

    result, _ = export(redis_server, tmp_path, keys=KEY_B)  # before rekey: A's capture is unreadable
    assert result.returncode == 1 and "could not be decrypted" in result.stderr

    rekey = osma_router(["rekey"], env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=f"{KEY_B},{KEY_A}"))
    assert rekey.returncode == 0, rekey.stderr
    assert "captured deliveries: 1 re-encrypted, 1 already under the newest key" in rekey.stdout
    assert "job payloads: 1 re-encrypted, 1 already under the newest key" in rekey.stdout
    assert {fields[b"d"] for _, fields in redis.xrange(CAPTURE_KEY)}.isdisjoint(before)
    assert redis.xlen(CAPTURE_KEY) == 2 and not redis.exists(CAPTURE_KEY + ":rekey")

    result, out = export(redis_server, tmp_path, keys=KEY_B)  # the old key is gone now
    assert result.returncode == 0, result.stderr
    assert [line["body"].encode() for line in read_lines(out)] == [old_body, new_body]
    only_b = start_receiver(ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=KEY_B)
    only_b.drain()  # both queued jobs decrypt with B alone
    assert sorted(handled(redis)) == ["evt_under_a|sample.record|r|1", "evt_under_b|sample.record|r|1"]

    again = osma_router(["rekey"], env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=KEY_B))
    assert again.returncode == 0 and "captured deliveries: 0 re-encrypted, 2 already" in again.stdout


def test_export_and_rekey_without_keys_are_one_line_errors(redis, redis_server, tmp_path):
    for args in (["capture", "export", str(tmp_path / "x.jsonl")], ["rekey"]):
        result = osma_router(args, env_for(redis_server.url))
        assert result.returncode == 1
        assert result.stderr.startswith("osma-router: error: OSMA_ROUTER_ENCRYPTION_KEYS")
        assert len(result.stderr.strip().splitlines()) == 1


def test_bad_since_is_a_one_line_error(redis, redis_server, tmp_path):
    result, _ = export(redis_server, tmp_path, "--since", "last tuesday")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "osma-router: error: --since 'last tuesday' is not an ISO 8601 date or "
        "time (e.g. 2026-11-20 or 2026-11-20T10:00:00Z)"
    )


def test_serve_refuses_capture_without_keys(redis, redis_server):
    result = osma_router(["serve", "--port", "1"], env_for(redis_server.url, OSMA_ROUTER_CAPTURE="on"))
    assert result.returncode == 1
    assert "OSMA_ROUTER_ENCRYPTION_KEYS" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_capture_status_counts(start_receiver, redis, redis_server):
    receiver = capturing(start_receiver)
    receiver.post(make_event(event_id="evt_status"))
    result = osma_router(["capture", "status"], env_for(redis_server.url))
    assert result.returncode == 0, result.stderr
    assert "kept deliveries: 1" in result.stdout


def test_first_deliveries_and_duplicates_together_stay_within_the_max_count(start_receiver, redis):
    receiver = capturing(start_receiver, OSMA_ROUTER_CAPTURE_MAX_COUNT="3")
    first = make_event(event_id="evt_cap_0")
    receiver.post(first)
    for _ in range(5):
        receiver.post(first)
    assert (redis.xlen(CAPTURE_KEY), redis.xlen(CAPTURE_DUPLICATES_KEY)) == (1, 2)
    for n in range(1, 4):
        receiver.post(make_event(event_id=f"evt_cap_{n}"))
    # First deliveries take the whole count back from the duplicates, never the reverse.
    assert (redis.xlen(CAPTURE_KEY), redis.xlen(CAPTURE_DUPLICATES_KEY)) == (3, 0)

"""`osma-router replay`: over HTTP re-signed, --direct through the receiver's pipeline,
--inline in process; dry runs, --force, filters, bad lines, summaries and exit codes."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet

from receiver.keys import dedup_key
from receiver.store.server import free_port
from tests.capture_support import capture_line, read_lines, redis_contents
from tests.support import SECRET, env_for, handled, make_event, osma_router

KEY = Fernet.generate_key().decode()
ROUTES = """
[[routes]]
on = "task.*"
handler = "sample.record"
label = "r"

[[routes]]
on = "task.completed"
handler = "sample.clock"
"""


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "replay-routes.toml"
    path.write_text(ROUTES)
    return path


def captured(start_receiver, redis, redis_server, tmp_path, *bodies: bytes) -> tuple[Path, list[str]]:
    """Deliver `bodies` to a capturing receiver, run their jobs, export the capture, then
    forget everything in Redis; returns the file and what the handlers recorded."""
    receiver = start_receiver(ROUTES, OSMA_ROUTER_CAPTURE="on", OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    for body in bodies:
        assert receiver.post(body).status_code in (200, 202)
    receiver.drain()
    original = handled(redis)
    out = tmp_path / "capture.jsonl"
    result = osma_router(
        ["capture", "export", str(out)], env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    )
    assert result.returncode == 0, result.stderr
    redis.flushall()
    return out, original


def records(entries: list[str]) -> list[str]:
    return sorted(e for e in entries if "|sample.record|" in e)


def clocks(entries: list[str]) -> dict[str, str]:
    return {e.split("|")[0]: e.split("|")[3] for e in entries if "|sample.clock|" in e}


def received_times(path: Path) -> dict[str, str]:
    return {orjson.loads(line["body"])["id"]: line["received_at"] for line in read_lines(path)}


def replay(redis_server, routes: Path | None, *args: str, **env: str):
    return osma_router(["replay", *args], env_for(redis_server.url, routes, **env))


def test_http_replay_is_resigned_and_accepted_by_a_receiver_with_the_same_secret(
    start_receiver, redis, redis_server, tmp_path
):
    bodies = [make_event(event_id="evt_h1"), make_event("task.updated", event_id="evt_h2")]
    capture, original = captured(start_receiver, redis, redis_server, tmp_path, *bodies)
    receiver = start_receiver(ROUTES)  # another receiver, same secret, empty Redis

    result = replay(redis_server, None, str(capture), "--to", receiver.url, "--secret", SECRET)
    assert result.returncode == 0, result.stderr
    assert "sent 2: accepted 2, duplicate 0, rejected 0, failed 0; bad lines 0" in result.stdout
    receiver.drain()
    assert records(handled(redis)) == records(original)

    again = replay(
        redis_server, None, str(capture), "--to", receiver.url + "/webhooks/osma", "--secret", SECRET
    )
    assert again.returncode == 0, again.stderr  # all duplicates: exit 0
    assert "accepted 0, duplicate 2" in again.stdout

    wrong = replay(redis_server, None, str(capture), "--to", receiver.url, "--secret", "whsec_wrong")
    assert wrong.returncode == 1
    assert "rejected 2" in wrong.stdout
    assert "line 1 evt_h1 task.completed: rejected: HTTP 401: signature_mismatch" in wrong.stderr
    assert "whsec_wrong" not in wrong.stderr + wrong.stdout


def test_direct_replay_has_the_original_effects_and_pins_the_clock(
    start_receiver, redis, redis_server, tmp_path, routes_file
):
    bodies = [make_event(event_id="evt_d1"), make_event("task.updated", event_id="evt_d2")]
    capture, original = captured(start_receiver, redis, redis_server, tmp_path, *bodies)

    result = replay(redis_server, routes_file, str(capture), "--direct")
    assert result.returncode == 0, result.stderr
    assert "sent 2: accepted 2" in result.stdout
    assert handled(redis) == []  # queued, not run: a worker runs them
    start_receiver(ROUTES).drain()
    after = handled(redis)
    assert records(after) == records(original)
    assert clocks(after) == {"evt_d1": received_times(capture)["evt_d1"]}


def test_inline_replay_runs_the_handlers_here_with_the_original_effects(
    start_receiver, redis, redis_server, tmp_path, routes_file
):
    bodies = [make_event(event_id="evt_i1"), make_event("task.updated", event_id="evt_i2")]
    capture, original = captured(start_receiver, redis, redis_server, tmp_path, *bodies)

    result = replay(redis_server, routes_file, str(capture), "--inline")
    assert result.returncode == 0, result.stderr
    assert "sent 2: accepted 2" in result.stdout
    after = handled(redis)
    assert records(after) == records(original)
    assert clocks(after) == {"evt_i1": received_times(capture)["evt_i1"]}
    assert redis.llen("rq:queue:osma-router") == 0  # no RQ involved
    assert redis.exists(dedup_key("osma", "evt_i1")) and redis.exists(dedup_key("osma", "evt_i2"))

    again = replay(redis_server, routes_file, str(capture), "--inline")
    assert again.returncode == 0 and "accepted 0, duplicate 2" in again.stdout
    assert handled(redis) == after


@pytest.mark.parametrize("mode", [["--direct"], ["--inline"], ["--to", "RECEIVER", "--secret", SECRET]])
def test_dry_run_changes_nothing(start_receiver, redis, redis_server, tmp_path, routes_file, mode):
    capture, _ = captured(start_receiver, redis, redis_server, tmp_path, make_event(event_id="evt_dry"))
    receiver = start_receiver(ROUTES)
    redis.set(dedup_key("osma", "evt_unrelated"), "1")
    before = redis_contents(redis)
    args = [receiver.url if arg == "RECEIVER" else arg for arg in mode]

    result = replay(redis_server, routes_file, str(capture), *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "line 1 evt_dry task.completed received" in result.stdout
    assert "would" in result.stdout and "nothing was sent or changed" in result.stdout
    assert redis_contents(redis) == before
    accepted = [
        float(line.rsplit(" ", 1)[1])
        for line in receiver.http.get("/metrics").text.splitlines()
        if line.startswith("osma_router_deliveries_total{") and 'outcome="accepted"' in line
    ]
    assert sum(accepted) == 0  # nothing reached the receiver either


@pytest.mark.parametrize("mode", ["--direct", "--inline"])
def test_force_reruns_once_and_keeps_the_original_ids(
    start_receiver, redis, redis_server, tmp_path, routes_file, mode
):
    body = make_event(event_id="evt_force")
    receiver = start_receiver(ROUTES)
    assert receiver.post(body).status_code == 202
    receiver.drain()
    assert records(handled(redis)) == ["evt_force|sample.record|r|1"]
    capture = tmp_path / "twice.jsonl"  # the delivery and its redelivery, as a capture holds them
    capture.write_bytes(capture_line(body) + b"\n" + capture_line(body, duplicate=True) + b"\n")

    plain = replay(redis_server, routes_file, str(capture), mode)
    assert plain.returncode == 0, plain.stderr
    assert "accepted 0, duplicate 2" in plain.stdout

    forced = replay(redis_server, routes_file, str(capture), mode, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "accepted 1, duplicate 1" in forced.stdout
    receiver.drain()
    assert records(handled(redis)) == ["evt_force|sample.record|r|1"] * 2  # exactly one more run
    assert redis.exists(dedup_key("osma", "evt_force"))
    assert receiver.post(body).json()["status"] == "duplicate"  # the id is still remembered


def test_force_over_http_is_refused(redis, redis_server, tmp_path):
    capture = tmp_path / "one.jsonl"
    capture.write_bytes(capture_line(make_event(event_id="evt_nope")) + b"\n")
    result = replay(
        redis_server, None, str(capture), "--to", "http://127.0.0.1:9/", "--secret", SECRET, "--force"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "osma-router: error: --force works with --direct and --inline only: "
        "over HTTP the receiver's dedup stands"
    ]
    assert result.stdout == ""


def test_filters_select_exactly_what_they_say(redis, redis_server, tmp_path, routes_file):
    rows = [  # id, type, received_at
        ("evt_a", "task.completed", "2026-11-20T09:00:00+00:00"),
        ("evt_b", "task.updated", "2026-11-20T10:00:00Z"),
        ("evt_c", "member.created", "2026-11-20T11:00:00+00:00"),
        ("evt_d", "task.completed", "2026-11-21T00:00:00+00:00"),
    ]
    capture = tmp_path / "filters.jsonl"
    capture.write_bytes(
        b"".join(capture_line(make_event(kind, event_id=i), at) + b"\n" for i, kind, at in rows)
    )

    def selected(*args: str) -> set[str]:
        redis.flushall()
        result = replay(redis_server, routes_file, str(capture), "--direct", *args)
        assert result.returncode == 0, result.stderr
        return {i for i, _, _ in rows if redis.exists(dedup_key("osma", i))}

    assert selected() == {"evt_a", "evt_b", "evt_c", "evt_d"}
    assert selected("--type", "task.completed") == {"evt_a", "evt_d"}
    assert selected("--type", "task.*") == {"evt_a", "evt_b", "evt_d"}
    assert selected("--id", "evt_c", "--id", "evt_a") == {"evt_a", "evt_c"}
    assert selected("--since", "2026-11-20T10:00:00Z") == {"evt_b", "evt_c", "evt_d"}
    assert selected("--until", "2026-11-20T10:00:00+00:00") == {"evt_a"}  # until is exclusive
    assert selected("--since", "2026-11-20", "--until", "2026-11-21") == {"evt_a", "evt_b", "evt_c"}
    assert selected("--type", "task.*", "--since", "2026-11-20T09:30:00Z", "--id", "evt_d") == {"evt_d"}


def test_bad_lines_are_reported_by_number_and_skipped(redis, redis_server, tmp_path, routes_file):
    good = make_event(event_id="evt_good")
    lines = [
        capture_line(good),  # 1 good
        b"this is not json",  # 2
        b"",  # 3 blank: ignored
        b"[1, 2]",  # 4
        b'{"id": "evt_x"}',  # 5 bare, no type
        orjson.dumps({"received_at": "2026-11-20T10:00:00Z", "body": 42}),  # 6
        capture_line(b"not an event"),  # 7
        orjson.dumps({"received_at": "yesterday", "body": good.decode()}),  # 8
        b"gAAAAABnot-a-real-token",  # 9
        b'{"id": "evt_bare", "type": "task.updated"}',  # 10 bare event: good
        b'{"id": "evt_trunc", "type": "task.upd',  # 11
    ]
    capture = tmp_path / "bad.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")
    result = replay(redis_server, routes_file, str(capture), "--direct", OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    reported = [line.split(":")[0] for line in result.stderr.strip().splitlines()]
    assert reported == [f"line {n}" for n in (2, 4, 5, 6, 7, 8, 9, 11)]
    assert "replay: 2 of 10 line(s) selected; sent 2: accepted 2" in result.stdout
    assert "bad lines 8" in result.stdout
    assert redis.exists(dedup_key("osma", "evt_good")) and redis.exists(dedup_key("osma", "evt_bare"))


def test_bare_event_lines_replay_inline(redis, redis_server, tmp_path, routes_file):
    events = tmp_path / "hand-written.jsonl"
    events.write_text(
        '{"id": "evt_hand", "type": "task.completed", "created_at": "2026-11-20T08:30:00Z",'
        ' "data": {"object": {"id": "tsk_1"}}}\n'
    )
    result = replay(redis_server, routes_file, str(events), "--inline")
    assert result.returncode == 0, result.stderr
    assert records(handled(redis)) == ["evt_hand|sample.record|r|1"]
    assert clocks(handled(redis)) == {"evt_hand": "2026-11-20T08:30:00+00:00"}  # created_at stands in


def test_inline_handler_failure_fails_the_replay_and_leaves_the_id_unmarked(redis, redis_server, tmp_path):
    routes = tmp_path / "broken.toml"
    routes.write_text('[[routes]]\non = "*"\nhandler = "sample.broken"\n')
    capture = tmp_path / "one.jsonl"
    capture.write_bytes(capture_line(make_event(event_id="evt_breaks")) + b"\n")
    redis.set("test:broken", "1")
    result = replay(redis_server, routes, str(capture), "--inline")
    assert result.returncode == 1
    assert (
        "line 1 evt_breaks task.completed: failed: sample.broken: HandlerError: broken on purpose"
        in result.stderr
    )
    assert "failed 1" in result.stdout
    assert not redis.exists(dedup_key("osma", "evt_breaks"))
    redis.delete("test:broken")
    assert replay(redis_server, routes, str(capture), "--inline").returncode == 0


def test_encrypted_export_replays_only_with_the_key(
    start_receiver, redis, redis_server, tmp_path, routes_file
):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_CAPTURE="on", OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    receiver.post(make_event(event_id="evt_enc"))
    sealed = tmp_path / "sealed.jsonl"
    env = env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    assert osma_router(["capture", "export", str(sealed), "--encrypted"], env).returncode == 0
    redis.flushall()

    without = replay(redis_server, routes_file, str(sealed), "--direct")
    assert without.returncode == 1
    assert without.stderr.strip() == (
        "osma-router: error: line 1 is encrypted but OSMA_ROUTER_ENCRYPTION_KEYS is not set"
    )
    with_key = replay(redis_server, routes_file, str(sealed), "--direct", OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    assert with_key.returncode == 0, with_key.stderr
    assert redis.exists(dedup_key("osma", "evt_enc"))


def test_unreachable_receiver_fails_and_gives_up(redis, redis_server, tmp_path):
    capture = tmp_path / "many.jsonl"
    capture.write_bytes(b"".join(capture_line(make_event(event_id=f"evt_u{n}")) + b"\n" for n in range(8)))
    result = replay(
        redis_server, None, str(capture), "--to", f"http://127.0.0.1:{free_port()}", "--secret", SECRET
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("osma-router: error: giving up after 5 deliveries in a row failed")


def test_rate_paces_the_replay(redis, redis_server, tmp_path):
    capture = tmp_path / "paced.jsonl"
    capture.write_bytes(b"".join(capture_line(make_event(event_id=f"evt_p{n}")) + b"\n" for n in range(6)))
    started = time.monotonic()
    result = replay(redis_server, None, str(capture), "--direct", "--rate", "20/s")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took >= 0.25  # five gaps of 50 ms
    bad = replay(redis_server, None, str(capture), "--direct", "--rate", "fast")
    assert (
        bad.returncode == 1
        and bad.stderr.strip() == "osma-router: error: --rate 'fast' is not a rate (e.g. 50/s)"
    )


def test_choosing_no_target_or_two_is_a_one_line_error(redis, redis_server, tmp_path):
    capture = tmp_path / "x.jsonl"
    capture.write_bytes(b"")
    for args in ([], ["--direct", "--inline"], ["--to", "http://127.0.0.1:9"]):
        # no signing secret anywhere, so --to alone is an error too
        result = replay(redis_server, None, str(capture), *args, OSMA_ROUTER_WEBHOOK_SECRETS="")
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    missing = replay(redis_server, None, str(tmp_path / "missing.jsonl"), "--direct")
    assert missing.returncode == 1
    assert "missing.jsonl: cannot read" in missing.stderr

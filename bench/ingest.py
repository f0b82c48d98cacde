"""Ingest benchmark: requests/s and p50/p99 latency of `POST /webhooks/osma`, for
`osma-router serve` and for a bare Starlette app (bench/bare_app.py) served by uvicorn with
the same settings, at several connection counts. See bench/README.md.

Load comes from wrk (keep-alive HTTP/1.1, one request in flight per connection, loopback)
driven by bench/ingest.lua through a file of distinct events, each signed just before the
run. After each osma-router run the Redis behind it is checked: every 202 answer must be
one job id in the queue and one dedup key, every repeat a 200, nothing else.

By default the server under test runs on core 0 and everything else (wrk, Redis, this
script) on core 1, so the load generator never takes CPU from the server it measures;
each server's CPU use over the measured run is reported. `--no-pin` shares all cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from redis import Redis

from receiver.keys import RQ_QUEUE_PREFIX, dedup_key
from receiver.model.signature import sign
from receiver.settings import Settings
from receiver.store.server import RedisServer, free_port

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SECRET = "whsec_bench"
ROUTES = '[[routes]]\non = "task.completed"\nhandler = "noop"\n'
WARMUP_REQUESTS = 2_000
# Sending stops at the time limit; this much longer lets the answers in flight arrive
# before wrk's own -d cap ends it (reached only if answers go missing).
DRAIN_SECONDS = 10

Process = subprocess.Popen[bytes]

SERVER_CORE = 0  # the server under test, alone
LOAD_CORE = 1  # wrk, redis-server and this script
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Case:
    server: str
    connections: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float
    sent: int
    answered: int
    statuses: dict[str, int]
    errors: dict[str, int]
    check: dict[str, Any]
    # CPU time over the measured run, as % of one core (None where /proc is missing).
    server_cpu: float | None = None
    redis_cpu: float | None = None
    wrk_cpu: float | None = None
    store_calls: int | None = None  # osma-router: admit script calls (grouped commits) in the run

    @property
    def cpu_us_per_request(self) -> float | None:
        """The server's CPU time per answer: unlike requests/s, it does not move much when
        other processes take the server's core for a while."""
        if self.server_cpu is None or not self.answered:
            return None
        return self.server_cpu / 100 * self.seconds / self.answered * 1e6


def event_body(event_id: str, serial: int) -> bytes:
    """A task.completed event of about 400 bytes, shaped like examples/task-completed.json."""
    task = {
        "id": f"tsk_{serial:012d}",
        "object": "task",
        "template": "update_blood_pressure",
        "status": "completed",
        "title": "Measure blood pressure",
        "member_id": f"mem_{serial % 9973:08d}",
        "completed_at": "2026-11-23T09:58:12+00:00",
        "data": {"systolic": 120 + serial % 40, "diastolic": 80 + serial % 20},
    }
    event = {
        "id": event_id,
        "object": "event",
        "type": "task.completed",
        "created_at": datetime.now(UTC).isoformat(),
        "live_mode": False,
        "data": {"object": task},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def write_requests(path: Path, host: str, tag: str, count: int, duplicate_pct: float, gap: int) -> list[str]:
    """Write `count` signed requests for ingest.lua; return their event ids in order.

    `duplicate_pct` % of them, evenly spread, repeat the event sent `gap` requests earlier.
    """
    now = int(time.time())
    ids: list[str] = []
    with path.open("wb") as out:
        for serial in range(count):
            repeat = int((serial + 1) * duplicate_pct / 100) > int(serial * duplicate_pct / 100)
            event_id = ids[serial - gap] if repeat and serial >= gap else f"evt_{tag}_{serial:08d}"
            ids.append(event_id)
            body = event_body(event_id, serial)
            head = (
                f"POST /webhooks/osma HTTP/1.1\r\nHost: {host}\r\nUser-Agent: osma-router-bench\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Osma-Signature: {sign(body, SECRET, now)}\r\n\r\n"
            ).encode()
            out.write(b"%d\n%s%s" % (len(head) + len(body), head, body))
    return ids


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far, from /proc; None
    where there is no /proc (macOS) or the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def cpu_share(before: float | None, after: float | None, seconds: float) -> float | None:
    """CPU time between two readings as % of one core over `seconds` of wall time."""
    if before is None or after is None or seconds <= 0:
        return None
    return 100 * (after - before) / seconds


def pinning_available() -> bool:
    return (
        hasattr(os, "sched_setaffinity")
        and shutil.which("taskset") is not None
        and {SERVER_CORE, LOAD_CORE} <= os.sched_getaffinity(0)
    )


def run_wrk(
    url: str, requests_file: Path, connections: int, seconds: float, cpu_of: dict[str, int] | None = None
) -> dict[str, Any]:
    """One wrk run (one thread: plenty for one Python server, and it leaves it more CPU).

    `cpu_of`: processes (name -> pid) whose CPU use over the run goes into the result as
    `cpu_<name>` (% of one core), and wrk's own as `cpu_wrk`.
    """
    cap = f"{int(seconds) + DRAIN_SECONDS}s"
    command = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(connections),
        "-d",
        cap,
        "--timeout",
        cap,
        "-s",
        str(BENCH / "ingest.lua"),
        url,
        "--",
        str(requests_file),
        str(seconds),
    ]
    pids = dict(cpu_of or {})
    started = time.monotonic()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    pids["wrk"] = wrk.pid
    before["wrk"] = 0.0
    after: dict[str, float | None] = {}
    elapsed = 0.0
    assert wrk.stdout is not None
    result: dict[str, Any] = {}
    for line in wrk.stdout:
        if line.startswith("thread-done"):
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            elapsed = time.monotonic() - started
            wrk.send_signal(signal.SIGINT)  # ends wrk's sleep through -d; see ingest.lua
        elif line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
    if wrk.wait(timeout=30) != 0 or not result:
        raise RuntimeError(f"wrk failed (exit {wrk.returncode})")
    for name in pids:
        result[f"cpu_{name}"] = cpu_share(before[name], after.get(name), elapsed) if after else None
    return result


def check_store(redis: Redis, ids: list[str], result: dict[str, Any]) -> dict[str, Any]:
    """Compare the answers with what Redis holds: accepted == queued, nothing lost."""
    sent_ids = ids[: result["sent"]]
    queued = redis.lrange(RQ_QUEUE_PREFIX + Settings.queue_name, 0, -1)
    seen = redis.scan_iter(match=dedup_key("osma", "*"), count=10_000)
    check = {
        "accepted": result["statuses"].get("202", 0),
        "duplicates": result["statuses"].get("200", 0),
        "queued": len(queued),
        "distinct_queued": len(set(queued)),
        "dedup_keys": sum(1 for _ in seen),
        "expected_accepted": len(set(sent_ids)),
        "expected_duplicates": len(sent_ids) - len(set(sent_ids)),
    }
    check["ok"] = (
        result["answered"] == result["sent"]
        and check["accepted"]
        == check["queued"]
        == check["distinct_queued"]
        == check["dedup_keys"]
        == check["expected_accepted"]
        and check["duplicates"] == check["expected_duplicates"]
    )
    return check


def start_server(command: list[str], env: dict[str, str], cwd: Path, port: int) -> Process:
    log = cwd / f"server-{port}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.05)
    stop(server)
    raise RuntimeError(f"{' '.join(command)} did not start; its log:\n{log.read_text()[-2000:]}")


def stop(process: Process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_profiler(pid: int, seconds: float, out: Path) -> Process | None:
    """Sample `pid` with py-spy (raw collapsed stacks) for `seconds`, if py-spy is here."""
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    py_spy = shutil.which("py-spy", path=search)
    if py_spy is None:
        print("--profile: py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
        return None
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "250",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_self_time(raw: Path, limit: int = 12) -> list[tuple[str, float]]:
    """The functions that most often sit at the top of the stack, as shares of all samples."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        # "name (file:line)" -> "name (file)": one entry per function, not per line.
        counts[re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1]) or "(no frame)"] += int(samples)
    total = sum(counts.values()) or 1
    return [(frame, count / total) for frame, count in counts.most_common(limit)]


def run_case(
    server: str,
    port: int,
    connections: int,
    args: argparse.Namespace,
    work: Path,
    redis: Redis | None,
    pids: dict[str, int],
    stamp: str,
    round_no: int,
) -> Case:
    """Warm up, then one measured run; `redis` is the store behind the server, if any.
    `pids`: the server's ("server") and Redis' ("redis"), for their CPU use."""
    host = f"127.0.0.1:{port}"
    url = f"http://{host}/webhooks/osma"
    tag = f"r{round_no}c{connections}"  # unique within a bench run: each has its Redis
    write_requests(work / "warmup.bin", host, f"{tag}w", WARMUP_REQUESTS, 0, 1)
    run_wrk(url, work / "warmup.bin", connections, args.duration)
    if redis is not None:
        redis.flushdb()
        redis.config_resetstat()  # so the script calls counted are this run's
    ids = write_requests(
        work / "requests.bin", host, tag, args.requests, args.duplicates, gap=4 * connections
    )
    profiler = None
    if args.profile and redis is not None:
        profile = RESULTS / f"profile-{stamp}-{server}-c{connections}-r{round_no}.txt"
        profiler = start_profiler(pids["server"], args.duration, profile)
    result = run_wrk(url, work / "requests.bin", connections, args.duration, pids)
    if profiler is not None:
        profiler.wait(args.duration + 30)
    calls = None
    if redis is not None:
        check = check_store(redis, ids, result)
        calls = redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    else:
        check = {"ok": result["answered"] == result["sent"] == result["statuses"].get("202", 0)}
    seconds = result["duration_us"] / 1e6
    return Case(
        server=server,
        connections=connections,
        round=round_no,
        rps=result["answered"] / seconds,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        seconds=seconds,
        sent=result["sent"],
        answered=result["answered"],
        statuses=result["statuses"],
        errors=result["errors"],
        check=check,
        server_cpu=result.get("cpu_server"),
        redis_cpu=result.get("cpu_redis"),
        wrk_cpu=result.get("cpu_wrk"),
        store_calls=calls,
    )


def describe_check(case: Case) -> str:
    c = case.check
    verdict = "OK" if c["ok"] else "FAIL"
    other = case.answered - case.statuses.get("202", 0) - case.statuses.get("200", 0)
    if "queued" not in c:
        return f"{case.statuses.get('202', 0)} x 202 of {case.sent} sent, {other} other: {verdict}"
    return (
        f"accepted (202) {c['accepted']} == queued {c['queued']} (distinct {c['distinct_queued']},"
        f" dedup keys {c['dedup_keys']}, expected {c['expected_accepted']}); duplicates (200)"
        f" {c['duplicates']} of {c['expected_duplicates']}; other {other};"
        f" unanswered {case.sent - case.answered}: {verdict}"
    )


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def per_request(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cost_ratio(bare: Case, router: Case) -> float | None:
    if bare.cpu_us_per_request is None or router.cpu_us_per_request is None:
        return None
    return bare.cpu_us_per_request / router.cpu_us_per_request


def report(cases: list[Case], args: argparse.Namespace, stamp: str, router: str, pinned: bool) -> None:
    where = (
        f"server on core {SERVER_CORE}; wrk, redis-server and the bench on core {LOAD_CORE}"
        if pinned
        else "not pinned: every process on every core"
    )
    print(f"\n{where}; CPU as % of one core over the measured run")
    print(
        f"{'round':>5} {'server':<20} {'conns':>5} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'server cpu':>10} {'µs cpu/req':>10} {'redis cpu':>9} {'wrk cpu':>8} {'per call':>8}"
    )
    for case in cases:
        print(
            f"{case.round:>5} {case.server:<20} {case.connections:>5} {case.rps:>9,.0f}"
            f" {case.p50_ms:>8.2f} {case.p99_ms:>8.2f} {percent(case.server_cpu):>10}"
            f" {per_request(case.cpu_us_per_request):>10}"
            f" {percent(case.redis_cpu):>9} {percent(case.wrk_cpu):>8}"
            f" {'-' if not case.store_calls else f'{case.answered / case.store_calls:.1f}':>8}"
        )
    by_key = {(case.server, case.connections, case.round): case for case in cases}
    rounds = range(1, args.rounds + 1)
    ratios = {
        str(n): [by_key[router, n, r].rps / by_key["bare", n, r].rps for r in rounds]
        for n in args.connections
    }
    costs = {
        str(n): [cost_ratio(by_key["bare", n, r], by_key[router, n, r]) for r in rounds]
        for n in args.connections
    }
    print(f"\nratio {router}/bare, round by round: rps (server CPU per request, bare/{router})")
    for n, values in ratios.items():
        pairs = zip(values, costs[n], strict=True)
        listed = ", ".join(f"{v:.2f} ({'-' if c is None else f'{c:.2f}'})" for v, c in pairs)
        print(f"  {n:>3} connections: {listed}")
    for n, goal in (("64", 0.5), ("16", 0.45)):
        if n in ratios:
            print(f"goal: ratio >= {goal} at {n} connections: {', '.join(f'{v:.2f}' for v in ratios[n])}")
    if 16 in args.connections:
        p99 = ", ".join(f"{by_key[router, 16, r].p99_ms:.2f}" for r in rounds)
        print(f"goal: p99 < 5 ms at 16 connections: {p99} ms")
    for case in cases:
        profile = RESULTS / f"profile-{stamp}-{case.server}-c{case.connections}-r{case.round}.txt"
        if args.profile and profile.is_file():
            label = f"{case.server} c{case.connections} round {case.round}"
            print(f"\nself time, {label} (py-spy, share of samples):")
            for frame, share in top_self_time(profile):
                print(f"  {share:6.1%}  {frame}")
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    machine = {
        "cpus": os.cpu_count(),
        "pinned": pinned,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": wrk_version.stdout.split("\n")[0],
    }
    out = RESULTS / f"ingest-{stamp}.json"
    results = {
        "started": stamp,
        "options": vars(args),
        "machine": machine,
        "cases": [asdict(case) | {"cpu_us_per_request": case.cpu_us_per_request} for case in cases],
        "ratios": ratios,
        "cpu_cost_ratios": costs,
    }
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out.relative_to(BENCH.parent)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="time limit of each measured run, seconds (default 10)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200_000,
        help="request count limit of each measured run (default 200000)",
    )
    parser.add_argument(
        "--connections",
        default="16,64",
        type=lambda text: [int(n) for n in text.split(",")],
        help="comma-separated connection counts (default 16,64)",
    )
    parser.add_argument(
        "--duplicates",
        type=float,
        default=0.0,
        metavar="PCT",
        help="percentage of requests that repeat an earlier event id (answer 200)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="run osma-router with OSMA_ROUTER_CAPTURE=on and an encryption key",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample osma-router with py-spy while it runs (takes CPU, skews"
        " the numbers); prints the functions with the most self time",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the servers this many times, interleaved (bare, osma-router, bare, ...; default 1)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run the server under test alone on core {SERVER_CORE}, and wrk, Redis and the"
        f" bench on core {LOAD_CORE} (default; needs Linux, taskset and 2 cores)."
        " --no-pin lets every process use every core",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.duration < 1 or not 0 <= args.duplicates < 100 or args.rounds < 1:
        parser.error(
            "--requests and --rounds must be positive, --duration at least 1, --duplicates in [0, 100)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/ingest.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 1
    pinned = args.pin and pinning_available()
    if args.pin and not pinned:
        print(
            f"not pinning: that needs Linux, taskset and cores {SERVER_CORE} and {LOAD_CORE};"
            " wrk and Redis share the cores with the server (see bench/README.md)",
            file=sys.stderr,
        )
    if pinned:
        # Everything started from here on (Redis, wrk) inherits core 1; servers go to core 0.
        os.sched_setaffinity(0, {LOAD_CORE})
    # The console script beside this interpreter (.venv/bin under `make bench`).
    osma_router = shutil.which("osma-router", path=str(Path(sys.executable).parent))
    osma_router = osma_router or "osma-router"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="osma-bench-") as tmp, RedisServer() as redis_server:
        work = Path(tmp)  # also the servers' cwd, so no .env file of the checkout is read
        (work / "routes.toml").write_text(ROUTES)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSMA_ROUTER_")}
        router_env = env | {
            "OSMA_ROUTER_REDIS_URL": redis_server.url,
            "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
            "OSMA_ROUTER_CONFIG": str(work / "routes.toml"),
        }
        router = "osma-router"
        if args.capture:
            router = "osma-router+capture"
            router_env |= {
                "OSMA_ROUTER_CAPTURE": "on",
                "OSMA_ROUTER_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            }
        redis = Redis.from_url(redis_server.url)
        redis_pid = redis.info("server")["process_id"]
        servers = [
            ("bare", [sys.executable, str(BENCH / "bare_app.py")], env, None),
            (router, [osma_router, "serve"], router_env, redis),
        ]
        pin = ["taskset", "-c", str(SERVER_CORE)] if pinned else []
        for round_no in range(1, args.rounds + 1):
            for name, command, server_env, store in servers:
                port = free_port()
                flags = ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
                server = start_server(pin + command + flags, server_env, work, port)
                pids = {"server": server.pid, "redis": redis_pid}
                try:
                    for connections in args.connections:
                        case = run_case(name, port, connections, args, work, store, pids, stamp, round_no)
                        print(
                            f"round {round_no} {name} c{connections}: {case.rps:,.0f} rps,"
                            f" server cpu {percent(case.server_cpu)}; {describe_check(case)}",
                            flush=True,
                        )
                        cases.append(case)
                finally:
                    stop(server)
        redis.close()
    report(cases, args, stamp, router, pinned)
    return 0 if all(case.check["ok"] for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())

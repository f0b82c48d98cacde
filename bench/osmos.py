"""Osmos ingest benchmark: `POST /ingest/osmos/<connector>` with batches of 1k, 50k and
250k records, against a real `osma-router serve` and its own redis-server.

For each batch size a fresh receiver is started and warmed up with a one-record batch;
then the batch is posted once and the run reports the seconds to the 202, records/s, the
receiver's peak RSS growth (VmHWM after minus VmRSS before, from /proc; Linux), and, in
the same run, the baseline: `orjson.loads` of the same body in this process (best of 3),
the fastest JSON parser installed. A thread PINGs Redis every 5 ms meanwhile; the slowest
PING is the longest stretch Redis was busy with the batch (other clients wait that long).
After each batch Redis is checked: one queued job and one dedup mark per record, no
staging keys left behind.

    python bench/osmos.py                       # 1k, 50k, 250k records, one route
    python bench/osmos.py --sizes 250000 --encrypt --routes 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.fernet import Fernet
from redis import Redis

from receiver.keys import OSMOS_INFLIGHT_KEY, RQ_QUEUE_PREFIX, osmos_seen_prefix
from receiver.settings import Settings
from receiver.store.server import RedisServer, free_port

BENCH = Path(__file__).resolve().parent
TOKEN = "bench-osmos-token"
CONNECTOR = """
[connectors.crm]
header = "Authorization"
token = "env:BENCH_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "name", type = "string", nullable = false },
  { name = "email", type = "string", nullable = true },
  { name = "visits", type = "integer", nullable = true },
  { name = "score", type = "number", nullable = false },
  { name = "active", type = "boolean", nullable = false },
  { name = "birthday", type = "date", nullable = true },
  { name = "updated_at", type = "datetime", nullable = false },
]
"""
ROUTE = '[[routes]]\non = "osmos.crm.record"\nhandler = "noop"\nlabel = "{n}"\n'


@dataclass
class Case:
    records: int
    body_bytes: int
    status: int
    seconds: float
    records_per_s: float
    rss_before_mb: float
    rss_peak_growth_mb: float
    parse_seconds: float
    parse_records_per_s: float
    ratio_to_parse: float
    redis_max_stall_ms: float
    check: dict[str, Any]


def make_body(count: int, seed: int) -> bytes:
    """`count` CRM-like records of about 220 bytes each, valid for the connector above."""
    rnd = random.Random(seed)
    records = [
        {
            "customer_id": f"cus_{seed}_{i:08d}",
            "name": f"Customer number {i} with a name",
            "email": f"customer{i}@example.com" if i % 7 else None,
            "visits": rnd.randint(0, 500),
            "score": round(rnd.random() * 100, 3),
            "active": rnd.random() < 0.5,
            "birthday": f"19{rnd.randint(10, 99)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
            "updated_at": (
                f"2026-11-{rnd.randint(10, 28)}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00Z"
            ),
        }
        for i in range(count)
    ]
    return orjson.dumps(records)


def parse_baseline(body: bytes, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        parsed = orjson.loads(body)
        best = min(best, time.perf_counter() - started)
        del parsed
    return best


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of `pid`, in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def start_server(command: list[str], env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[bytes]:
    log = (cwd / f"server-{port}.log").open("wb")
    server = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.05)
    stop(server)
    raise RuntimeError(f"osma-router serve did not start; see its log:\n{Path(log.name).read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class StallProbe:
    """PINGs Redis every few ms from a thread; the slowest answer is how long Redis was
    busy at a stretch (a staging chunk, the commit) while the batch was stored."""

    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url, socket_timeout=30)
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            started = time.perf_counter()
            self.redis.ping()
            self.worst = max(self.worst, time.perf_counter() - started)

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self.redis.close()


def post(url: str, body: bytes, timeout: float) -> httpx.Response:
    headers = {"authorization": TOKEN, "content-type": "application/json"}
    return httpx.post(url, content=body, headers=headers, timeout=timeout)


def check_store(redis: Redis, records: int, routes: int) -> dict[str, Any]:
    queued = sum(
        orjson.loads(redis.hget(f"rq:job:{job_id.decode()}", "data"))[2][0].get("records", 1)
        for job_id in redis.lrange(RQ_QUEUE_PREFIX + Settings.queue_name, 0, -1)
    )
    seen = sum(redis.hlen(key) for key in redis.scan_iter(match=osmos_seen_prefix("crm") + "*", count=10_000))
    staging = sum(1 for _ in redis.scan_iter(match="osma_router:osmos:batch:*", count=10_000))
    staging += redis.zcard(OSMOS_INFLIGHT_KEY)
    check = {
        "queued": queued,
        "expected_queued": records * routes,
        "dedup_keys": seen,
        "staging_keys_left": staging,
    }
    check["ok"] = queued == records * routes and seen == records and staging == 0
    return check


def run_case(
    count: int, args: argparse.Namespace, osma_router: str, env: dict[str, str], work: Path, redis: Redis
) -> Case:
    body = make_body(count, seed=count)
    parse_seconds = parse_baseline(body)
    redis.flushdb()
    port = free_port()
    server = start_server([osma_router, "serve", "--host", "127.0.0.1", "--port", str(port)], env, work, port)
    url = f"http://127.0.0.1:{port}/ingest/osmos/crm"
    try:
        warm = post(url, make_body(1, seed=0), 30)
        if warm.status_code != 202:
            raise RuntimeError(f"warm-up answered {warm.status_code}: {warm.text}")
        redis.flushdb()
        before = proc_status(server.pid)
        with StallProbe(env["OSMA_ROUTER_REDIS_URL"]) as probe:
            started = time.perf_counter()
            response = post(url, body, args.timeout)
            seconds = time.perf_counter() - started
        after = proc_status(server.pid)
        if response.status_code != 202:
            log = (work / f"server-{port}.log").read_text()[-2000:]
            print(f"{count}: HTTP {response.status_code} {response.text[:500]}\n{log}", file=sys.stderr)
        check = check_store(redis, count, args.routes)
        check["ok"] = check["ok"] and response.status_code == 202
    finally:
        stop(server)
    return Case(
        records=count,
        body_bytes=len(body),
        status=response.status_code,
        seconds=seconds,
        records_per_s=count / seconds,
        rss_before_mb=before["VmRSS"],
        rss_peak_growth_mb=after["VmHWM"] - before["VmRSS"],
        parse_seconds=parse_seconds,
        parse_records_per_s=count / parse_seconds,
        ratio_to_parse=seconds / parse_seconds,
        redis_max_stall_ms=probe.worst * 1000,
        check=check,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="1000,50000,250000",
        type=lambda text: [int(n) for n in text.split(",")],
        help="comma-separated batch sizes (default 1000,50000,250000)",
    )
    parser.add_argument(
        "--routes", type=int, default=1, help="routes matching every record (jobs per record; default 1)"
    )
    parser.add_argument(
        "--encrypt", action="store_true", help="run with OSMA_ROUTER_ENCRYPTION_KEYS (job payloads sealed)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    if any(n < 1 or n > 250_000 for n in args.sizes) or args.routes < 0:
        parser.error("sizes must be 1..250000 and --routes at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/status").is_file():
        print("osmos.py reads peak RSS from /proc (Linux)", file=sys.stderr)
        return 1
    osma_router = shutil.which("osma-router", path=str(Path(sys.executable).parent)) or "osma-router"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="osma-bench-osmos-") as tmp, RedisServer() as redis_server:
        work = Path(tmp)
        routes = "".join(ROUTE.format(n=n) for n in range(args.routes))
        (work / "routes.toml").write_text(routes + CONNECTOR)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSMA_ROUTER_")}
        env |= {
            "OSMA_ROUTER_REDIS_URL": redis_server.url,
            "OSMA_ROUTER_WEBHOOK_SECRETS": "whsec_bench",
            "OSMA_ROUTER_CONFIG": str(work / "routes.toml"),
            "BENCH_OSMOS_TOKEN": TOKEN,
        }
        if args.encrypt:
            env["OSMA_ROUTER_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
        redis = Redis.from_url(redis_server.url)
        for count in args.sizes:
            case = run_case(count, args, osma_router, env, work, redis)
            print(
                f"{count:>7} records: {case.seconds:6.2f} s, {case.records_per_s:>9,.0f} records/s, "
                f"peak RSS +{case.rss_peak_growth_mb:,.0f} MB; orjson.loads {case.parse_seconds:.3f} s "
                f"(x{case.ratio_to_parse:.1f}); Redis busy <= {case.redis_max_stall_ms:.0f} ms at a stretch; "
                f"store {'OK' if case.check['ok'] else 'FAIL'}",
                flush=True,
            )
            cases.append(case)
        redis.close()
    report(cases, args, stamp)
    return 0 if all(case.check["ok"] for case in cases) else 1


def report(cases: list[Case], args: argparse.Namespace, stamp: str) -> None:
    print(
        f"\n{'records':>8} {'MB':>7} {'seconds':>8} {'records/s':>10} {'RSS +MB':>8} "
        f"{'parse s':>8} {'parse rec/s':>12} {'x parse':>8} {'stall ms':>9}"
    )
    for c in cases:
        print(
            f"{c.records:>8} {c.body_bytes / 1e6:>7.1f} {c.seconds:>8.2f} {c.records_per_s:>10,.0f} "
            f"{c.rss_peak_growth_mb:>8,.0f} {c.parse_seconds:>8.3f} {c.parse_records_per_s:>12,.0f} "
            f"{c.ratio_to_parse:>8.1f} {c.redis_max_stall_ms:>9.0f}"
        )
    biggest = max(cases, key=lambda c: c.records)
    print(
        f"\ngoals at {biggest.records} records: < 30 s: {biggest.seconds:.1f} s; < 1 GB RSS growth: "
        f"{biggest.rss_peak_growth_mb:,.0f} MB; within 2x of parsing alone: x{biggest.ratio_to_parse:.1f}"
    )
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "orjson": orjson.__version__,
    }
    (BENCH / "results").mkdir(exist_ok=True)
    out = BENCH / "results" / f"osmos-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "started": stamp,
                "options": vars(args),
                "machine": machine,
                "cases": [asdict(c) for c in cases],
            },
            indent=2,
        )
    )
    print(f"results: {out.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    sys.exit(main())
